//! Redis on the xRPC framework, as APISIX's `redis` protocol: each command
//! is a request; `conf.faults` delays commands (`commands`, optional `key`,
//! `delay` in seconds); a subordinate route takes the commands its
//! `conf.commands` lists. RESP2 and RESP3 pass byte for byte; after
//! `SUBSCRIBE`/`PSUBSCRIBE` (or as RESP3 pushes) pub/sub messages answer
//! no request. Inside `MULTI` every command follows the `MULTI` to the
//! same upstream, up to its `EXEC` or `DISCARD`.

pub mod keys;
pub mod names;
pub mod resp;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Answer, Codec, Protocol, ReplyDecoder, ReplyStep, Request};
use keys::Keys;
use resp::{FrameInfo, RequestDecoder, Step};

/// Longest value written whole into a request's command line (APISIX's).
const MAX_VALUE_LEN: usize = 128;

/// The faults of one command.
#[derive(Debug, Default)]
struct CommandFaults {
    /// Where its keys are.
    keys: Option<Keys>,
    /// Delay by key.
    by_key: HashMap<Vec<u8>, Duration>,
    /// Delay for any key (a rule without `key`, or a command without keys).
    any: Option<Duration>,
}

/// The `redis` protocol with one route's `conf`.
#[derive(Debug, Default)]
pub struct Redis {
    faults: HashMap<String, CommandFaults>,
    /// Commands a subordinate route takes (lower case).
    commands: Vec<String>,
}

impl Redis {
    /// Compile a validated `conf`.
    pub fn compile(conf: Option<&Value>) -> Result<Redis, String> {
        let mut r = Redis::default();
        let Some(conf) = conf else {
            return Ok(r);
        };
        for rule in conf
            .get("faults")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let secs = rule.get("delay").and_then(Value::as_f64).unwrap_or(0.0);
            // Clamped as every configured delay is (a year at most), so the
            // relay's deadline can always be computed; zero or negative is none.
            let delay = crate::model::duration::secs(secs).unwrap_or(Duration::ZERO);
            let key = rule.get("key").and_then(Value::as_str);
            for cmd in rule
                .get("commands")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let cmd = cmd.to_ascii_lowercase();
                let f = r.faults.entry(cmd.clone()).or_default();
                let k = Keys::of(&cmd);
                f.keys = Some(k);
                match key {
                    Some(key) if k != Keys::None => {
                        f.by_key.insert(key.as_bytes().to_vec(), delay);
                    }
                    _ => f.any = Some(delay),
                }
            }
        }
        r.commands = conf
            .get("commands")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect();
        Ok(r)
    }
}

impl Protocol for Redis {
    fn codec(self: Arc<Self>) -> Box<dyn Codec> {
        Box::new(RedisCodec {
            conf: self,
            last: None,
            dec: RequestDecoder::default(),
            in_multi: false,
        })
    }

    fn takes(&self, req: &Request) -> bool {
        self.commands.iter().any(|c| **c == *req.command)
    }

    fn line_var(&self) -> &'static str {
        "redis_cmd_line"
    }
}

/// One client connection's decoder.
struct RedisCodec {
    conf: Arc<Redis>,
    /// The last command name found among the known ones.
    last: Option<&'static str>,
    dec: RequestDecoder,
    in_multi: bool,
}

impl Codec for RedisCodec {
    fn decode_request(&mut self, buf: &[u8], want_line: bool) -> Result<Option<Request>, String> {
        let Some(len) = self.dec.decode(buf)? else {
            return Ok(None);
        };
        let req = &buf[..len];
        let args = self.dec.args();
        let raw = &req[args[0].clone()];
        // Pipelines repeat commands: the last known name is tried first.
        let command = match self.last {
            Some(last) if raw.eq_ignore_ascii_case(last.as_bytes()) => Cow::Borrowed(last),
            _ => command_name(raw),
        };
        if let Cow::Borrowed(name) = command {
            self.last = Some(name);
        }
        let narg = args.len();
        let mut delay = None;
        if let Some(f) = self.conf.faults.get(&*command) {
            let keys = f.keys.unwrap_or(Keys::First);
            let hit = (2..=narg)
                .filter(|&i| keys.is_key(i, narg))
                .find_map(|i| f.by_key.get(&req[args[i - 1].clone()]));
            delay = hit.copied().or(f.any);
        }
        let mut line = Vec::new();
        if want_line {
            let keys = Keys::of(&command);
            line.reserve(narg.min(64));
            line.push(command.to_string());
            for (i, r) in args.iter().enumerate().skip(1) {
                let v = &req[r.clone()];
                if v.len() > MAX_VALUE_LEN && !keys.is_key(i + 1, narg) {
                    line.push(format!(
                        "{}...({} bytes)",
                        String::from_utf8_lossy(&v[..MAX_VALUE_LEN]),
                        v.len()
                    ));
                } else {
                    line.push(String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        let pinned = self.in_multi;
        match &*command {
            "multi" => self.in_multi = true,
            "exec" | "discard" => self.in_multi = false,
            _ => {}
        }
        Ok(Some(Request {
            len,
            command,
            line,
            delay,
            pinned,
        }))
    }

    fn reply_decoder(&self) -> Box<dyn ReplyDecoder> {
        Box::new(RedisReplies::default())
    }
}

/// A command's name in lower case: a known one without an allocation.
fn command_name(raw: &[u8]) -> Cow<'static, str> {
    let mut buf = [0u8; 32];
    if raw.len() <= buf.len() {
        let lower = &mut buf[..raw.len()];
        lower.copy_from_slice(raw);
        lower.make_ascii_lowercase();
        if let Some(name) = std::str::from_utf8(lower).ok().and_then(names::known) {
            return Cow::Borrowed(name);
        }
    }
    Cow::Owned(String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// A pub/sub command's name as its confirmations spell it; `None` for any
/// other command.
fn pubsub_kind(command: &str) -> Option<&'static str> {
    Some(match command {
        "subscribe" => "subscribe",
        "psubscribe" => "psubscribe",
        "ssubscribe" => "ssubscribe",
        "unsubscribe" => "unsubscribe",
        "punsubscribe" => "punsubscribe",
        "sunsubscribe" => "sunsubscribe",
        _ => return None,
    })
}

/// One upstream connection's frame finder. It keeps the commands sent and
/// not answered, so the RESP2 subscribed mode starts with the reply to the
/// first `SUBSCRIBE`, not before: replies to the commands pipelined ahead
/// of it stay replies.
#[derive(Default)]
struct RedisReplies {
    dec: resp::ReplyDecoder,
    /// For each command sent and not answered: its pub/sub kind, if any.
    waiting: VecDeque<Option<&'static str>>,
}

impl ReplyDecoder for RedisReplies {
    fn sent(&mut self, req: &Request) {
        self.waiting.push_back(pubsub_kind(&req.command));
    }

    fn decode(&mut self, buf: &[u8]) -> Result<ReplyStep, String> {
        if self.dec.at_frame_start() {
            if let Some(Some("subscribe" | "psubscribe" | "ssubscribe")) = self.waiting.front() {
                self.dec.subscribed = true;
            }
        }
        Ok(match self.dec.decode(buf)? {
            Step::More(n) => ReplyStep::More(n),
            Step::Frame(n, FrameInfo::Value) => {
                self.waiting.pop_front();
                ReplyStep::Frame(n, Answer::Oldest)
            }
            Step::Frame(n, FrameInfo::PubSub { kind, .. }) => {
                if self.waiting.front().copied().flatten() == Some(kind.as_str()) {
                    self.waiting.pop_front();
                }
                ReplyStep::Frame(n, Answer::IfCommand(kind))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    fn decode(r: &Arc<Redis>, args: &[&str]) -> Request {
        let mut c = Arc::clone(r).codec();
        c.decode_request(&cmd(args), true).unwrap().unwrap()
    }

    #[test]
    fn faults_match_command_and_key_as_apisix() {
        let r = Arc::new(
            Redis::compile(Some(&json!({"faults": [
                {"commands": ["GET", "mget"], "key": "bogus_key", "delay": 0.5},
                {"commands": ["ping"], "key": "ignored", "delay": 1},
                {"commands": ["set"], "delay": 2}
            ]})))
            .unwrap(),
        );
        let d = |args: &[&str]| decode(&r, args).delay.map(|d| d.as_secs_f64());
        assert_eq!(d(&["GET", "bogus_key"]), Some(0.5));
        assert_eq!(d(&["get", "other"]), None);
        assert_eq!(d(&["MGET", "a", "bogus_key"]), Some(0.5));
        assert_eq!(
            d(&["PING"]),
            Some(1.0),
            "a command without keys ignores key"
        );
        assert_eq!(d(&["SET", "x", "y"]), Some(2.0));
        assert_eq!(d(&["DEL", "bogus_key"]), None);
    }

    #[test]
    fn a_huge_fault_delay_is_clamped_to_a_year() {
        let r = Arc::new(
            Redis::compile(Some(&json!({"faults": [
                {"commands": ["get"], "delay": 1e18},
                {"commands": ["set"], "delay": -3}
            ]})))
            .unwrap(),
        );
        let get = decode(&r, &["GET", "k"]).delay.expect("a delay");
        assert_eq!(get, crate::model::duration::MAX);
        // A deadline from it can be computed (no overflow).
        let _ = tokio::time::Instant::now() + get;
        let set = decode(&r, &["SET", "k", "v"]).delay;
        assert!(set.is_none_or(|d| d.is_zero()), "{set:?}");
    }

    #[test]
    fn command_line_cuts_long_values_but_not_keys() {
        let r = Arc::new(Redis::default());
        let long = "v".repeat(200);
        let req = decode(&r, &["SET", &long, &long]);
        assert_eq!(req.command, "set");
        assert!(matches!(req.command, Cow::Borrowed("set")), "no allocation");
        let mut c = Arc::clone(&r).codec();
        for (raw, want) in [
            ("GeT", "get"),
            ("get", "get"),
            ("XYZ", "xyz"),
            ("Get", "get"),
        ] {
            let req = c.decode_request(&cmd(&[raw, "k"]), false).unwrap().unwrap();
            assert_eq!(req.command, want);
        }
        assert_eq!(req.line[1], long, "a key is kept whole");
        assert_eq!(req.line[2], format!("{}...(200 bytes)", "v".repeat(128)));
    }

    #[test]
    fn replies_pipelined_before_subscribe_stay_replies() {
        let r = Arc::new(Redis::default());
        let codec = Arc::clone(&r).codec();
        let mut replies = codec.reply_decoder();
        for args in [&["LRANGE", "l", "0", "-1"][..], &["SUBSCRIBE", "c"]] {
            replies.sent(&decode(&r, args));
        }
        let bytes = b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n\
            *3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n";
        let mut pos = 0;
        let mut answers = Vec::new();
        while pos < bytes.len() {
            match replies.decode(&bytes[pos..]).unwrap() {
                ReplyStep::Frame(n, a) => {
                    pos += n;
                    answers.push(a);
                }
                ReplyStep::More(n) => panic!("incomplete at {}", pos + n),
            }
        }
        assert_eq!(
            answers,
            [
                Answer::Oldest,
                Answer::IfCommand("subscribe".into()),
                Answer::IfCommand("message".into())
            ]
        );
    }

    #[test]
    fn transactions_stay_on_one_upstream() {
        let mut c = Arc::new(Redis::default()).codec();
        let pinned: Vec<bool> = [&["MULTI"][..], &["SET", "a", "1"], &["EXEC"], &["GET", "a"]]
            .iter()
            .map(|a| c.decode_request(&cmd(a), false).unwrap().unwrap().pinned)
            .collect();
        assert_eq!(pinned, [false, true, true, false]);
    }
}
