//! The executable against a live server: every client command, flag
//! precedence, table and JSON output, each error with its exit code and
//! one-line message, and the committed completions and man pages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::backend::{closed_without_data, roundtrip, Backend, Mode};
use crate::harness::{
    bin, free_port, program, run_cli, test_yaml, wait_exit, within, TestServer, KEY, VIEWER_KEY,
};

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.out))
    }

    /// Exit 1 with exactly one line on stderr containing every `needles`.
    fn fails_with(&self, needles: &[&str]) {
        assert_eq!(self.code, 1, "{self:?}");
        assert_eq!(self.err.lines().count(), 1, "{self:?}");
        assert!(self.err.starts_with("apisix-stream: "), "{self:?}");
        for n in needles {
            assert!(self.err.contains(n), "{n:?} not in {self:?}");
        }
    }

    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// A run's inputs besides the arguments.
#[derive(Default, Clone)]
struct Opts {
    env: Vec<(&'static str, String)>,
    stdin: Option<String>,
    cwd: Option<PathBuf>,
}

/// Run the binary to completion (bounded); never inherits APISIX_ADMIN_KEY,
/// and runs in an empty directory unless told otherwise, so no
/// `conf/config.yaml` is found by accident.
fn exec(args: Vec<String>, opts: Opts) -> Run {
    let empty = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin());
    cmd.args(&args)
        .current_dir(opts.cwd.as_deref().unwrap_or(empty.path()))
        .env_remove("APISIX_ADMIN_KEY")
        .env("RUST_LOG", "warn")
        .stdin(if opts.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    if let (Some(text), Some(mut stdin)) = (opts.stdin, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).expect("stdin");
    }
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_exit(&mut child, 20, &format!("apisix-stream {args:?}"));
    Run {
        code: status.code().unwrap_or(-1),
        out: out.join().expect("stdout reader"),
        err: err.join().expect("stderr reader"),
    }
}

/// Run off the async runtime (the server in this process keeps serving).
async fn exec_async(args: &[&str], opts: Opts) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    within(30, tokio::task::spawn_blocking(move || exec(args, opts)))
        .await
        .expect("cli thread")
}

/// Run against `s` with the admin key; the global flags go after the
/// subcommand (they are accepted anywhere).
async fn cli(s: &TestServer, args: &[&str]) -> Run {
    cli_in(s, args, Opts::default()).await
}

async fn cli_in(s: &TestServer, args: &[&str], opts: Opts) -> Run {
    let url = format!("http://{}", s.admin);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin-url", &url, "--api-key", KEY]);
    exec_async(&all, opts).await
}

#[tokio::test]
async fn route_add_list_get_delete_round_trip_moves_traffic() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    let port = s.tcp[0].port().to_string();
    let node = echo.addr.to_string();

    let r = cli(
        &s,
        &[
            "route",
            "add",
            "--id",
            "1",
            "--server-port",
            &port,
            "--node",
            &node,
        ],
    )
    .await;
    // One line for people; the node stored as typed, in APISIX's map form.
    assert_eq!(
        r.ok().out,
        format!("created stream route 1 (server_port {port} -> {node})\n")
    );
    let v = cli(&s, &["route", "get", "1"]).await.ok().json();
    assert_eq!(v["id"], "1");
    assert_eq!(v["server_port"], s.tcp[0].port());
    assert_eq!(v["upstream"]["nodes"], json!({node.clone(): 1}));
    // The same again replaces it; -o json prints the stored route.
    let again = cli(
        &s,
        &[
            "route",
            "add",
            "--id",
            "1",
            "--server-port",
            &port,
            "--node",
            &format!("{node}=3"),
            "-o",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(again["upstream"]["nodes"], json!({node.clone(): 3}));
    let mut c = within(5, tokio::net::TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut c, b"ping").await, b"ping");

    // POST: the server picks the id.
    let r = cli(
        &s,
        &[
            "route",
            "add",
            "--server-port",
            "9999",
            "--node",
            &node,
            "--desc",
            "second",
            "-o",
            "json",
        ],
    )
    .await;
    let posted = r.ok().json();
    let posted_id = posted["id"].as_str().expect("id").to_string();
    assert!(!posted_id.is_empty() && posted_id != "1", "{posted}");

    let table = cli(&s, &["route", "list"]).await;
    table.ok();
    let lines: Vec<&str> = table.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.out);
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("SERVER_PORT")
            && lines[0].contains("UPSTREAM")
    );
    let row1 = lines
        .iter()
        .find(|l| l.starts_with("1 "))
        .expect("row of route 1");
    assert!(row1.contains(&port) && row1.contains(&node), "{row1}");
    assert!(
        lines.iter().all(|l| l.chars().count() <= 80),
        "{}",
        table.out
    );

    let list = cli(&s, &["route", "list", "-o", "json"]).await.ok().json();
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"1") && ids.contains(&posted_id.as_str()));

    let got = cli(&s, &["route", "get", "1"]).await.ok().json();
    assert_eq!(got["upstream"], again["upstream"]);

    let del = cli(&s, &["route", "delete", "1"]).await;
    assert_eq!(del.ok().out, "deleted stream route 1\n");
    let mut c = within(5, tokio::net::TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert!(
        closed_without_data(&mut c).await,
        "traffic still flows after delete"
    );

    cli(&s, &["route", "get", "1"])
        .await
        .fails_with(&["stream route \"1\" does not exist"]);
    cli(&s, &["route", "delete", "1"])
        .await
        .fails_with(&["does not exist"]);
}

#[tokio::test]
async fn route_add_checks_flags_locally_and_stores_nothing() {
    let s = TestServer::start().await;
    for (args, flag) in [
        (
            vec!["--server-port", "70000", "--node", "127.0.0.1:1"],
            "--server-port",
        ),
        (vec!["--server-port", "1", "--node", "127.0.0.1"], "--node"),
        (
            vec!["--server-port", "1", "--node", "127.0.0.1:0"],
            "--node",
        ),
        (
            vec!["--server-port", "1", "--node", "127.0.0.1:80=heavy"],
            "--node",
        ),
        (vec!["--server-port", "1", "--node", "::1:80"], "--node"),
        (
            vec!["--remote-addr", "10.0.0.0/40", "--node", "127.0.0.1:1"],
            "--remote-addr",
        ),
        (
            vec!["--server-addr", "localhost", "--node", "127.0.0.1:1"],
            "--server-addr",
        ),
        (
            vec!["--node", "127.0.0.1:1", "--plugin", "ip-restriction={oops"],
            "--plugin",
        ),
        (vec!["--server-port", "1"], "--node"),
    ] {
        let mut all = vec!["route", "add", "--id", "9"];
        all.extend(args);
        cli(&s, &all).await.fails_with(&[flag]);
    }
    // What only the server knows comes back as its error_msg, exit 1.
    cli(&s, &["route", "add", "--id", "9", "--upstream-id", "nope"])
        .await
        .fails_with(&[
            "failed to fetch upstream info by upstream id [nope]",
            "HTTP 400",
        ]);
    let list = cli(&s, &["route", "list", "-o", "json"]).await.ok().json();
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn route_add_reads_json_from_stdin_and_flags_override_it() {
    let s = TestServer::start().await;
    let base = json!({
        "server_port": 1000,
        "remote_addr": "10.0.0.0/8",
        "upstream": {"type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 3306, "weight": 1}]},
        "create_time": 1,
    });
    let opts = Opts {
        stdin: Some(base.to_string()),
        ..Opts::default()
    };
    let r = cli_in(
        &s,
        &[
            "route",
            "add",
            "-f",
            "-",
            "--id",
            "7",
            "--server-port",
            "2000",
            "--plugin",
            r#"ip-restriction={"whitelist":["10.0.0.0/8"]}"#,
            "-o",
            "json",
        ],
        opts,
    )
    .await;
    let v = r.ok().json();
    assert_eq!(v["id"], "7");
    assert_eq!(v["server_port"], 2000);
    assert_eq!(v["remote_addr"], "10.0.0.0/8");
    assert_eq!(v["upstream"], base["upstream"]);
    assert_eq!(
        v["plugins"]["ip-restriction"]["whitelist"],
        json!(["10.0.0.0/8"])
    );

    // `get` output fed back in, under a new id and port.
    let got = cli(&s, &["route", "get", "7"]).await.ok().out.clone();
    let opts = Opts {
        stdin: Some(got),
        ..Opts::default()
    };
    let v = cli_in(
        &s,
        &[
            "route",
            "add",
            "-f",
            "-",
            "--id",
            "8",
            "--server-port",
            "2001",
            "--output",
            "json",
        ],
        opts,
    )
    .await
    .ok()
    .json();
    assert_eq!(
        (v["id"].clone(), v["server_port"].clone()),
        (json!("8"), json!(2001))
    );

    let opts = Opts {
        stdin: Some("[1, 2]".into()),
        ..Opts::default()
    };
    cli_in(&s, &["route", "add", "-f", "-"], opts)
        .await
        .fails_with(&["JSON object", "--file"]);
    cli(&s, &["route", "add", "-f", "/no/such/file.json"])
        .await
        .fails_with(&["cannot read /no/such/file.json"]);
}

#[tokio::test]
async fn upstream_commands_and_routes_that_use_them() {
    let s = TestServer::start().await;
    let v = cli(
        &s,
        &[
            "upstream",
            "add",
            "--id",
            "u1",
            "--node",
            "127.0.0.1:3306=2",
            "--node",
            "[::1]:3307",
            "--type",
            "chash",
            "--retries",
            "1",
            "--connect-timeout",
            "2",
            "--name",
            "mysql",
            "-o",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["id"], "u1");
    assert_eq!(v["type"], "chash");
    assert_eq!(v["key"], "remote_addr");
    assert_eq!(v["retries"], 1);
    assert_eq!(v["timeout"], json!({"connect": 2, "send": 60, "read": 60}));
    assert_eq!(v["nodes"], json!({"127.0.0.1:3306": 2, "[::1]:3307": 1}));
    // A priority is what the map cannot say: the list form carries it.
    let r = cli(
        &s,
        &[
            "upstream",
            "add",
            "--id",
            "u2",
            "--node",
            "10.0.0.1:3306",
            "--node",
            "10.0.0.2:3306=1@-1",
        ],
    )
    .await;
    assert_eq!(
        r.ok().out,
        "created upstream u2 (roundrobin 10.0.0.1:3306,10.0.0.2:3306)\n"
    );
    let v = cli(&s, &["upstream", "get", "u2"]).await.ok().json();
    assert_eq!(
        v["nodes"],
        json!([{"host": "10.0.0.1", "port": 3306, "weight": 1},
               {"host": "10.0.0.2", "port": 3306, "weight": 1, "priority": -1}])
    );
    cli(&s, &["upstream", "delete", "u2"]).await.ok();

    let table = cli(&s, &["upstream", "list"]).await;
    let lines: Vec<&str> = table.ok().out.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("TYPE") && lines[0].contains("NODES"));
    assert!(
        lines[1].contains("chash")
            && lines[1].contains("127.0.0.1:3306,[::1]:3307")
            && lines[1].contains("mysql"),
        "{}",
        table.out
    );

    let r = cli(
        &s,
        &[
            "route",
            "add",
            "--id",
            "r1",
            "--server-port",
            "9100",
            "--upstream-id",
            "u1",
        ],
    )
    .await;
    assert_eq!(
        r.ok().out,
        "created stream route r1 (server_port 9100 -> upstream u1)\n"
    );
    let table = cli(&s, &["route", "list"]).await;
    assert!(table.ok().out.contains("upstream u1"), "{}", table.out);

    cli(&s, &["upstream", "delete", "u1"])
        .await
        .fails_with(&["stream route [r1] is still using it"]);
    assert_eq!(
        cli(&s, &["upstream", "delete", "u1", "--force"])
            .await
            .ok()
            .out,
        "deleted upstream u1\n"
    );
    cli(&s, &["upstream", "get", "u1"])
        .await
        .fails_with(&["upstream \"u1\" does not exist"]);
    cli(
        &s,
        &[
            "upstream",
            "add",
            "--node",
            "127.0.0.1:1",
            "--read-timeout",
            "soon",
        ],
    )
    .await
    .fails_with(&["--read-timeout"]);
}

fn write_cert(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, String) {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, c.cert.pem()).expect("write cert");
    let key_pem = c.key_pair.serialize_pem();
    std::fs::write(&key, &key_pem).expect("write key");
    (cert, key, key_pem)
}

#[tokio::test]
async fn ssl_add_takes_snis_from_the_certificate_and_never_prints_the_key() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, key_pem) = write_cert(dir.path(), &["db.example.com", "*.db.example.com"]);
    let (cert, key) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));

    let r = cli(
        &s,
        &["ssl", "add", "--id", "s1", "--cert", cert, "--key", key],
    )
    .await;
    let v = r.ok().json();
    assert_eq!(v["snis"], json!(["db.example.com", "*.db.example.com"]));
    assert!(v.get("key").is_none());
    let body = key_pem.lines().nth(1).expect("key body line");
    assert!(!r.out.contains("PRIVATE KEY") && !r.out.contains(body));

    let v = cli(
        &s,
        &[
            "ssl",
            "add",
            "--cert",
            cert,
            "--key",
            key,
            "--sni",
            "other.test",
            "--ca",
            cert,
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["snis"], json!(["other.test"]));
    assert!(v["client"]["ca"]
        .as_str()
        .expect("ca")
        .contains("BEGIN CERTIFICATE"));

    let table = cli(&s, &["ssl", "list"]).await;
    assert!(table
        .ok()
        .out
        .lines()
        .next()
        .expect("header")
        .starts_with("ID"));
    assert!(
        table.out.contains("db.example.com,*.db.example.com") && table.out.contains("server+mtls"),
        "{}",
        table.out
    );
    for args in [vec!["ssl", "list", "-o", "json"], vec!["ssl", "get", "s1"]] {
        let r = cli(&s, &args).await;
        assert!(
            !r.ok().out.contains("PRIVATE KEY") && !r.out.contains(body),
            "{args:?} printed the key"
        );
    }
    // The key must match the certificate; the server says so.
    let other = tempfile::tempdir().expect("tempdir");
    let (_, other_key, _) = write_cert(other.path(), &["x.test"]);
    let other_key = other_key.to_str().expect("utf8");
    cli(&s, &["ssl", "add", "--cert", cert, "--key", other_key])
        .await
        .fails_with(&["cannot add the ssl", "HTTP 400"]);
    cli(&s, &["ssl", "add", "--cert", key, "--key", key])
        .await
        .fails_with(&["--cert"]);
    cli(&s, &["ssl", "add", "--cert", "/no/cert.pem", "--key", key])
        .await
        .fails_with(&["cannot read --cert /no/cert.pem"]);
    assert_eq!(
        cli(&s, &["ssl", "delete", "s1"]).await.ok().out,
        "deleted ssl s1\n"
    );
}

#[tokio::test]
async fn route_test_names_the_winner_and_why_the_others_lost() {
    let s = TestServer::with_tcp(&["127.0.0.1:0"]).await;
    let node = json!({"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}});
    s.put_route("1", &json!({"server_port": 9100, "upstream": node}))
        .await;
    s.put_route(
        "2",
        &json!({"server_port": 9100, "remote_addr": "10.0.0.0/8", "upstream": node}),
    )
    .await;
    s.put_route("3", &json!({"server_port": 9101, "upstream": node}))
        .await;

    let r = cli(
        &s,
        &[
            "route",
            "test",
            "--server-port",
            "9100",
            "--remote-addr",
            "10.1.2.3",
        ],
    )
    .await;
    r.ok();
    assert!(
        r.out
            .contains("matched: route 2 (server_port=9100 remote_addr=10.0.0.0/8)"),
        "{}",
        r.out
    );
    assert!(
        r.out
            .contains("route 1: matches, but route 2 takes precedence"),
        "{}",
        r.out
    );
    assert!(!r.out.contains("route 3"), "{}", r.out);

    let r = cli(&s, &["route", "test", "--server-port", "9100"]).await;
    assert!(r.ok().out.contains("matched: route 1"), "{}", r.out);
    assert!(
        r.out
            .contains("route 2: remote_addr 10.0.0.0/8 does not contain 127.0.0.1"),
        "{}",
        r.out
    );

    let v = cli(
        &s,
        &["route", "test", "--server-port", "9100", "-o", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["matched"], "1");
    assert_eq!(v["routes"][1]["id"], "2");
    assert_eq!(v["routes"][1]["matched"], false);

    let r = cli(&s, &["route", "test", "--server-port", "9200"]).await;
    r.fails_with(&["no stream route matches"]);
    assert!(r.out.contains("matched: none"), "{}", r.out);
    cli(&s, &["route", "test", "--server-port", "x"])
        .await
        .fails_with(&["--server-port"]);

    // Read-only: a viewer key may ask.
    let url = format!("http://{}", s.admin);
    exec_async(
        &[
            "--api-key",
            VIEWER_KEY,
            "--admin-url",
            &url,
            "route",
            "test",
            "--server-port",
            "9101",
        ],
        Opts::default(),
    )
    .await
    .ok();
}

#[tokio::test]
async fn client_failures_are_one_line_with_exit_1() {
    let s = TestServer::start().await;
    let url = format!("http://{}", s.admin);
    let closed = format!("http://127.0.0.1:{}", free_port());
    exec_async(&["--admin-url", &closed, "route", "list"], Opts::default())
        .await
        .fails_with(&[
            "cannot reach the admin API at",
            "connection refused",
            "--admin-url",
        ]);
    exec_async(
        &["--admin-url", &url, "--api-key", "wrong", "route", "list"],
        Opts::default(),
    )
    .await
    .fails_with(&["rejected the API key", "--api-key"]);
    exec_async(&["--admin-url", &url, "route", "list"], Opts::default())
        .await
        .fails_with(&["needs an API key", "APISIX_ADMIN_KEY"]);
    exec_async(
        &[
            "--admin-url",
            &url,
            "--api-key",
            VIEWER_KEY,
            "route",
            "add",
            "--id",
            "1",
            "--node",
            "127.0.0.1:1",
        ],
        Opts::default(),
    )
    .await
    .fails_with(&["read-only"]);
    exec_async(
        &["--admin-url", "ftp://x", "route", "list"],
        Opts::default(),
    )
    .await
    .fails_with(&["--admin-url"]);
}

#[tokio::test]
async fn admin_address_and_key_follow_flag_env_config_precedence() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}", s.admin);
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, test_yaml(&dir.path().join("data"), s.admin.port())).expect("write");
    let wrong_key = dir.path().join("wrong-key.yaml");
    std::fs::write(
        &wrong_key,
        test_yaml(&dir.path().join("data"), s.admin.port()).replace(KEY, "not-the-key-0123456789"),
    )
    .expect("write");
    let wrong_port = dir.path().join("wrong-port.yaml");
    std::fs::write(
        &wrong_port,
        test_yaml(&dir.path().join("data"), free_port()),
    )
    .expect("write");
    let (good, wrong_key, wrong_port) = (
        good.to_str().expect("utf8"),
        wrong_key.to_str().expect("utf8"),
        wrong_port.to_str().expect("utf8"),
    );
    let env = |k: &str| Opts {
        env: vec![("APISIX_ADMIN_KEY", k.to_string())],
        ..Opts::default()
    };

    // Config alone gives address and key; `-c` works after the subcommand too.
    exec_async(&["route", "list", "-c", good], Opts::default())
        .await
        .ok();
    // Env beats the config's key; the flag beats env.
    exec_async(&["-c", wrong_key, "route", "list"], Opts::default())
        .await
        .fails_with(&["rejected the API key"]);
    exec_async(&["-c", wrong_key, "route", "list"], env(KEY))
        .await
        .ok();
    exec_async(
        &["-c", good, "--api-key", KEY, "route", "list"],
        env("wrong"),
    )
    .await
    .ok();
    exec_async(&["-c", good, "route", "list"], env("wrong"))
        .await
        .fails_with(&["rejected the API key"]);
    // The flag beats the config's address.
    exec_async(&["-c", wrong_port, "route", "list"], Opts::default())
        .await
        .fails_with(&["cannot reach"]);
    exec_async(
        &["-c", wrong_port, "--admin-url", &url, "route", "list"],
        Opts::default(),
    )
    .await
    .ok();
    // conf/config.yaml of the working directory is the default config.
    std::fs::create_dir_all(dir.path().join("conf")).expect("mkdir");
    std::fs::copy(good, dir.path().join("conf/config.yaml")).expect("copy");
    let here = Opts {
        cwd: Some(dir.path().to_path_buf()),
        ..Opts::default()
    };
    exec_async(&["route", "list", "-o", "json"], here)
        .await
        .ok();
    exec_async(
        &["-c", "/no/such/config.yaml", "route", "list"],
        Opts::default(),
    )
    .await
    .fails_with(&["/no/such/config.yaml"]);
}

#[test]
fn committed_completions_and_man_pages_are_current() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (args, file) in [
        (
            vec!["completions", "bash"],
            "completions/apisix-stream.bash",
        ),
        (vec!["completions", "zsh"], "completions/_apisix-stream"),
        (
            vec!["completions", "fish"],
            "completions/apisix-stream.fish",
        ),
        (vec!["man"], "man/apisix-stream.1"),
    ] {
        let r = exec(
            args.iter().map(|s| s.to_string()).collect(),
            Opts::default(),
        );
        assert_eq!(r.code, 0, "{}", r.err);
        assert!(!r.out.is_empty());
        let committed = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == r.out,
            "{file} is stale: regenerate with `apisix-stream {}`",
            args.join(" ")
        );
    }
    // Every page, one per command, and nothing else in man/.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf8").to_string();
    let r = exec(vec!["man".into(), "--out-dir".into(), out], Opts::default());
    assert_eq!(r.code, 0, "{}", r.err);
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let generated = names(dir.path());
    assert!(
        generated.contains(&"apisix-stream-route.1".to_string()),
        "{generated:?}"
    );
    assert!(
        generated.contains(&"apisix-stream-route-add.1".to_string()),
        "{generated:?}"
    );
    assert_eq!(
        generated,
        names(&Path::new(root).join("man")),
        "man/ is stale: regenerate with `apisix-stream man --out-dir man`"
    );
    for name in generated {
        let fresh = std::fs::read(dir.path().join(&name)).expect("generated page");
        let committed =
            std::fs::read(Path::new(root).join("man").join(&name)).expect("committed page");
        assert!(
            fresh == committed,
            "man/{name} is stale: regenerate with `apisix-stream man --out-dir man`"
        );
    }
}

#[test]
fn usage_errors_exit_2_and_version_prints() {
    let (code, _, err) = run_cli(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"));
    for args in [
        vec!["route", "add", "--bogus"],
        vec!["route"],
        vec!["route", "add", "--type", "random"],
        vec![
            "route",
            "add",
            "--node",
            "127.0.0.1:1",
            "--upstream-id",
            "1",
        ],
        vec!["ssl", "add", "--cert", "c.pem"],
    ] {
        let r = exec(
            args.iter().map(|s| s.to_string()).collect(),
            Opts::default(),
        );
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    let (code, out, _) = run_cli(&["-V"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("apisix-stream "), "{out}");
    let help = exec(
        vec!["route".into(), "add".into(), "--help".into()],
        Opts::default(),
    );
    assert_eq!(help.code, 0);
    assert!(
        help.out.contains("Example: apisix-stream route add --id 1"),
        "{}",
        help.out
    );
}

#[test]
fn bash_completion_reaches_subcommands_and_flags() {
    let bash = program("bash", "bash");
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/completions/apisix-stream.bash"
    );
    let script = format!(
        r#"source '{file}'
COMP_WORDS=(apisix-stream route ""); COMP_CWORD=2; _apisix__stream apisix-stream "" route; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(apisix-stream route add --server-p); COMP_CWORD=3; _apisix__stream apisix-stream --server-p add; echo "${{COMPREPLY[*]}}""#
    );
    let out = Command::new(bash)
        .arg("-c")
        .arg(script)
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.contains("add") && l.contains("test")),
        "{text}"
    );
    assert_eq!(lines.get(1).copied(), Some("--server-port"), "{text}");
}

#[tokio::test]
async fn list_filters_as_apisix_list_queries_and_watch_refreshes() {
    let s = TestServer::start().await;
    let up = json!({"nodes": {"127.0.0.1:3306": 1}});
    for (id, name, labels) in [
        ("1", "mysql-primary", json!({"env": "prod", "tier": "db"})),
        ("2", "redis", json!({"env": "dev"})),
        ("3", "other", json!({})),
    ] {
        s.put_route(
            id,
            &json!({"name": name, "labels": labels, "server_port": 9000 + id.parse::<u16>().unwrap_or(0),
                    "upstream": up}),
        )
        .await;
    }
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (args, want) in [
        (vec!["-l", "env=prod"], vec!["1"]),
        (vec!["--selector", "env!=prod"], vec!["2", "3"]),
        (vec!["--label", "tier"], vec!["1"]),
        (vec!["--name", "^(mysql|redis)"], vec!["1", "2"]),
        (vec!["--name", "mysql", "-l", "env=dev"], vec![]),
    ] {
        let mut all = vec!["route", "list", "-o", "json"];
        all.extend(&args);
        let got = ids(cli(&s, &all).await.ok().json());
        assert_eq!(got, want, "{args:?}");
    }
    cli(&s, &["route", "list", "-l", "a b"])
        .await
        .fails_with(&["--selector"]);

    // --watch: a listing now, another when the routes change.
    let url = format!("http://{}", s.admin);
    let mut child = Command::new(bin())
        .args([
            "route",
            "list",
            "--watch",
            "--interval",
            "100ms",
            "-l",
            "env",
            "--admin-url",
            &url,
            "--api-key",
            KEY,
        ])
        .env_remove("APISIX_ADMIN_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (rx, first) = within(
        15,
        tokio::task::spawn_blocking(move || {
            let seen = watch_shows(&rx, "2");
            (rx, seen)
        }),
    )
    .await
    .expect("reader");
    s.put_route(
        "4",
        &json!({"labels": {"env": "qa"}, "server_port": 9004, "upstream": up}),
    )
    .await;
    let refreshed = within(
        15,
        tokio::task::spawn_blocking(move || (first, watch_shows(&rx, "4"))),
    )
    .await
    .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(refreshed, (true, true), "watch did not show the routes");
}

/// Wait (at most 10 s) for a `--watch` output line that is the row of `id`.
fn watch_shows(rx: &std::sync::mpsc::Receiver<String>, id: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(&format!("{id} ")) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}
