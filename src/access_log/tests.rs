use super::*;

fn entry() -> Entry {
    Entry {
        time: UNIX_EPOCH + Duration::from_millis(1_795_686_911_042), // 2026-11-26 09:55:11.042 UTC
        connection: 7,
        client: "127.0.0.1:5000".parse().expect("addr"),
        server: "127.0.0.1:9100".parse().expect("addr"),
        protocol: "TCP",
        status: 200,
        listener: "0.0.0.0:9100".into(),
        route_id: Some("1".into()),
        node: Some("127.0.0.1:1995".into()),
        sni: None,
        connect_time: Some(Duration::from_millis(2)),
        protocol_name: None,
        bytes_in: 3,
        bytes_out: 12,
        duration: Duration::from_millis(1500),
        end: "closed".into(),
    }
}

fn line(format: &str, escape: Escape, e: &Entry) -> String {
    let t = Template::compile(format, escape).expect("compiles");
    let mut out = String::new();
    t.render(e, &mut out);
    out
}

#[test]
fn time_local_matches_nginx_format() {
    let t = UNIX_EPOCH + Duration::from_secs(1_795_686_911); // 2026-11-26 09:55:11 UTC
    assert_eq!(time_local(t), "26/Nov/2026:09:55:11 +0000");
    assert_eq!(time_local(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    assert_eq!(time_local(leap), "29/Feb/2000:00:00:00 +0000");
}

#[test]
fn default_format_is_apisix_s() {
    assert_eq!(
        line(DEFAULT_FORMAT, Escape::Default, &entry()),
        "127.0.0.1 [26/Nov/2026:09:55:11 +0000] TCP 200 12 3 1.500"
    );
}

#[test]
fn detailed_format_keeps_the_session_details() {
    assert_eq!(
        line(DETAILED_FORMAT, Escape::Default, &entry()),
        "127.0.0.1 [26/Nov/2026:09:55:11 +0000] TCP 200 12 3 1.500 client=127.0.0.1:5000 \
         listen=0.0.0.0:9100 route=1 node=127.0.0.1:1995 end=\"closed\""
    );
}

#[test]
fn every_variable_renders() {
    let all: String = variable_names().map(|n| format!("{n}=${{{n}}} ")).collect();
    let out = line(all.trim_end(), Escape::Default, &entry());
    assert_eq!(
        out,
        "remote_addr=127.0.0.1 remote_port=5000 server_addr=127.0.0.1 server_port=9100 \
         protocol=TCP status=200 bytes_sent=12 bytes_received=3 session_time=1.500 \
         time_local=26/Nov/2026:09:55:11 +0000 time_iso8601=2026-11-26T09:55:11+00:00 \
         msec=1795686911.042 connection=7 pid=PID upstream_addr=127.0.0.1:1995 \
         upstream_bytes_sent=3 upstream_bytes_received=12 upstream_connect_time=0.002 \
         ssl_server_name=- route_id=1 node=127.0.0.1:1995 protocol_name=- \
         listen_addr=0.0.0.0:9100 session_end=closed"
            .replace("PID", &std::process::id().to_string())
    );
}

#[test]
fn unset_values_are_dash_by_default_and_empty_otherwise() {
    let mut e = entry();
    e.node = None;
    e.route_id = None;
    let f = "[$route_id|$upstream_addr|$upstream_bytes_sent|$ssl_server_name]";
    assert_eq!(line(f, Escape::Default, &e), "[-|-|-|-]");
    assert_eq!(line(f, Escape::Json, &e), "[|||]");
    assert_eq!(line(f, Escape::None, &e), "[|||]");
}

#[test]
fn escaping_follows_nginx() {
    let mut e = entry();
    e.sni = Some("a\"b\\c\nd\u{7f}é".into());
    assert_eq!(
        line("$ssl_server_name", Escape::Default, &e),
        "a\\x22b\\x5Cc\\x0Ad\\x7F\\xC3\\xA9"
    );
    assert_eq!(
        line("$ssl_server_name", Escape::Json, &e),
        "a\\\"b\\\\c\\nd\u{7f}é"
    );
    assert_eq!(
        line("$ssl_server_name", Escape::None, &e),
        "a\"b\\c\nd\u{7f}é"
    );
    e.sni = Some("\u{1}\t".into());
    assert_eq!(line("$ssl_server_name", Escape::Json, &e), "\\u0001\\t");
}

#[test]
fn bad_formats_are_refused() {
    assert_eq!(
        Template::compile("$remote_addr $nope", Escape::Default),
        Err(TemplateError::Unknown("nope".into()))
    );
    assert_eq!(
        Template::compile("cost $ 5", Escape::Default),
        Err(TemplateError::BadName(5))
    );
    assert_eq!(
        Template::compile("${remote_addr", Escape::Default),
        Err(TemplateError::BadName(0))
    );
    // Text around and between variables stays as written; `${}` joins names.
    let e = entry();
    assert_eq!(
        line("<${remote_addr}x$status>", Escape::None, &e),
        "<127.0.0.1x200>"
    );
}

#[test]
fn lines_reach_the_file_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("logs/access.log");
    let template = Template::compile("$remote_port", Escape::Default).expect("compile");
    let log = AccessLog::start(path.to_str().expect("utf8"), template).expect("start");
    let record = |port: u16| Record {
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        server: "127.0.0.1:9100".parse().expect("addr"),
        protocol: "UDP",
        status: 200,
        listener: "l",
        route_id: "r",
        node: "-",
        sni: None,
        connect_time: None,
        protocol_name: None,
        bytes_in: 1,
        bytes_out: 2,
        duration: Duration::ZERO,
        end: "idle timeout",
    };
    log.record(&record(1));
    let wait_for = |p: &Path, want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            if text == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} holds {text:?}, want {want:?}",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(&path, "1\n");
    let rotated = dir.path().join("logs/access.log.1");
    std::fs::rename(&path, &rotated).expect("rename");
    log.record(&record(2));
    log.reopen();
    log.record(&record(3));
    wait_for(&rotated, "1\n2\n");
    wait_for(&path, "3\n");
}
