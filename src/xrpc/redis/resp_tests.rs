//! RESP framing tests: every split of the input, nested and RESP3 types,
//! malformed and oversized input.

use super::*;

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Feed `bytes` one byte more at a time, as the relay would (the buffer
/// keeps what is not consumed); the lengths of the requests found.
fn requests_bytewise(bytes: &[u8]) -> Result<Vec<(usize, Vec<String>)>, Malformed> {
    let mut d = RequestDecoder::default();
    let mut start = 0;
    let mut found = Vec::new();
    for end in 1..=bytes.len() {
        while let Some(len) = d.decode(&bytes[start..end])? {
            let req = &bytes[start..start + len];
            let args = d
                .args()
                .iter()
                .map(|r| String::from_utf8_lossy(&req[r.clone()]).into_owned())
                .collect();
            found.push((len, args));
            start += len;
        }
    }
    Ok(found)
}

#[test]
fn requests_split_at_every_byte_boundary() {
    let a = cmd(&["SET", "key", "a\r\nvalue with CRLF"]);
    let b = cmd(&["GET", "key"]);
    let c = cmd(&["PING"]);
    let all = [a.clone(), b.clone(), c.clone()].concat();
    let found = requests_bytewise(&all).unwrap();
    assert_eq!(
        found,
        vec![
            (
                a.len(),
                vec!["SET".into(), "key".into(), "a\r\nvalue with CRLF".into()]
            ),
            (b.len(), vec!["GET".into(), "key".into()]),
            (c.len(), vec!["PING".into()]),
        ]
    );
    // And every split into two reads.
    for cut in 0..all.len() {
        let mut d = RequestDecoder::default();
        let first = d.decode(&all[..cut]).unwrap();
        if cut < a.len() {
            assert_eq!(first, None, "cut {cut}");
            assert_eq!(d.decode(&all).unwrap(), Some(a.len()), "cut {cut}");
        } else {
            assert_eq!(first, Some(a.len()), "cut {cut}");
        }
    }
}

#[test]
fn empty_and_binary_arguments() {
    let mut bytes = b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$2\r\n".to_vec();
    bytes.extend_from_slice(&[0, 255]);
    bytes.extend_from_slice(b"\r\n");
    let found = requests_bytewise(&bytes).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, bytes.len());
}

#[test]
fn malformed_requests_are_refused_with_a_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"PING\r\n", "expected '*'"),
        (b"*0\r\n", "invalid argument number: 0"),
        (b"*-1\r\n", "invalid argument number: -1"),
        (b"*1e9\r\n", "invalid len string"),
        (b"*\r\n", "invalid len string"),
        (b"*1\r\n:1\r\n", "expected '$'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length: -1"),
        (b"*1\r\n$3\r\nGETxx", "not followed by CRLF"),
        (b"*2000000\r\n", "invalid argument number"),
    ];
    for (bytes, why) in cases {
        let err = requests_bytewise(bytes).unwrap_err();
        assert!(err.contains(why), "{bytes:?}: {err}");
    }
    // A length line that never ends is refused, not buffered forever.
    let long = [b"*".as_slice(), &[b'1'; 200]].concat();
    assert!(requests_bytewise(&long)
        .unwrap_err()
        .contains("line longer"));
}

#[test]
fn huge_declared_bulk_lengths_are_refused_before_any_data() {
    let mut d = RequestDecoder::default();
    // 600 MB announced, nothing sent: refused at the length line.
    let err = d.decode(b"*2\r\n$3\r\nSET\r\n$600000000\r\n").unwrap_err();
    assert_eq!(err, "invalid bulk length: 600000000");
    let err = RequestDecoder::default()
        .decode(b"*1\r\n$999999999999999999\r\n")
        .unwrap_err();
    assert!(err.contains("invalid bulk length"), "{err}");
    // The largest allowed length waits for its bytes without reserving them.
    let mut d = RequestDecoder::default();
    assert_eq!(d.decode(b"*1\r\n$536870912\r\nab").unwrap(), None);
    assert!(d.args.capacity() < 16);
}

/// Feed `bytes` one byte at a time through a [`ReplyDecoder`]; the frames
/// found with their lengths.
fn replies_bytewise(bytes: &[u8], subscribed: bool) -> Result<Vec<(usize, FrameInfo)>, Malformed> {
    let mut d = ReplyDecoder {
        subscribed,
        ..ReplyDecoder::default()
    };
    let mut frame_start = 0;
    let mut pos = 0;
    let mut found = Vec::new();
    for end in 1..=bytes.len() {
        loop {
            match d.decode(&bytes[pos..end])? {
                Step::More(n) => {
                    pos += n;
                    break;
                }
                Step::Frame(n, info) => {
                    pos += n;
                    found.push((pos - frame_start, info));
                    frame_start = pos;
                }
            }
        }
    }
    assert_eq!(frame_start, bytes.len(), "trailing bytes left");
    Ok(found)
}

/// The same in one call per frame over the whole buffer.
fn replies_whole(bytes: &[u8], subscribed: bool) -> Vec<(usize, FrameInfo)> {
    let mut d = ReplyDecoder {
        subscribed,
        ..ReplyDecoder::default()
    };
    let mut pos = 0;
    let mut found = Vec::new();
    while pos < bytes.len() {
        match d.decode(&bytes[pos..]).unwrap() {
            Step::Frame(n, info) => {
                found.push((n, info));
                pos += n;
            }
            Step::More(n) => panic!("incomplete after {n}"),
        }
    }
    found
}

#[test]
fn resp2_and_resp3_replies_split_at_every_byte_boundary() {
    let frames: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR unknown command\r\n",
        b"-ERR a lone \r inside\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n$1\r\na\r\n:1\r\n*2\r\n+x\r\n$-1\r\n",
        // HELLO 3's map, with nested array.
        b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n",
        b"~2\r\n+a\r\n+b\r\n",
        b"_\r\n",
        b"#t\r\n",
        b",3.14\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        // An attribute, then the value it describes: one frame.
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n",
        // Deeply nested.
        b"*1\r\n*1\r\n*1\r\n*1\r\n%1\r\n+k\r\n~1\r\n:1\r\n",
    ];
    let all = frames.concat();
    let expected: Vec<(usize, FrameInfo)> =
        frames.iter().map(|f| (f.len(), FrameInfo::Value)).collect();
    assert_eq!(replies_bytewise(&all, false).unwrap(), expected);
    assert_eq!(replies_whole(&all, false), expected);
}

#[test]
fn pushes_and_subscribed_arrays_report_their_type() {
    let sub = b">3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n".as_slice();
    let msg = b">3\r\n$7\r\nmessage\r\n$3\r\nfoo\r\n$3\r\nbar\r\n".as_slice();
    let all = [sub, msg, b"+OK\r\n"].concat();
    let found = replies_bytewise(&all, false).unwrap();
    assert_eq!(
        found,
        vec![
            (
                sub.len(),
                FrameInfo::PubSub {
                    kind: "subscribe".into(),
                    count: Some(1)
                }
            ),
            (
                msg.len(),
                FrameInfo::PubSub {
                    kind: "message".into(),
                    count: None
                }
            ),
            (5, FrameInfo::Value),
        ]
    );
    // RESP2: arrays of 3 or 4 are messages only while subscribed; the last
    // unsubscribe (count 0) leaves the mode.
    let pmsg = b"*4\r\n$8\r\npmessage\r\n$2\r\nf*\r\n$3\r\nfoo\r\n$1\r\nx\r\n".as_slice();
    let unsub = b"*3\r\n$11\r\nunsubscribe\r\n$3\r\nfoo\r\n:0\r\n".as_slice();
    let after = b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n".as_slice();
    let all = [pmsg, unsub, after].concat();
    let found = replies_bytewise(&all, true).unwrap();
    assert_eq!(
        found.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
        vec![
            FrameInfo::PubSub {
                kind: "pmessage".into(),
                count: None
            },
            FrameInfo::PubSub {
                kind: "unsubscribe".into(),
                count: Some(0)
            },
            FrameInfo::Value,
        ]
    );
}

#[test]
fn malformed_replies_are_refused() {
    for (bytes, why) in [
        (b"?1\r\n".as_slice(), "unknown prefix"),
        (b"$abc\r\n", "invalid len string"),
        (b"$600000000\r\n", "invalid bulk length"),
        (b"*99999999\r\n", "invalid aggregate length"),
        (b"$3\r\nabcXY", "not followed by CRLF"),
        (b"%-1\r\n", "invalid aggregate length"),
    ] {
        let mut d = ReplyDecoder::default();
        let err = d.decode(bytes).unwrap_err();
        assert!(err.contains(why), "{bytes:?}: {err}");
    }
    let deep = b"*1\r\n".repeat(100);
    assert!(ReplyDecoder::default()
        .decode(&deep)
        .unwrap_err()
        .contains("nested"));
}
