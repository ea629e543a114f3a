//! `apisix-stream top` end to end: the real binary in a tmux pane against a
//! real server with one long-lived connection through route 1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use apisix_stream::config::{ListenAddr, ListenSpec};
use serde_json::json;
use tokio::net::TcpStream;

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{bin, eventually, program, within, TestServer};

/// A tmux server on a private socket, killed (with its sessions) on drop,
/// so a failed test never leaves a dashboard running.
struct Tmux {
    program: PathBuf,
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.program)
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn capture(&self, session: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", session]).stdout)
            .into_owned()
    }

    fn alive(&self, session: &str) -> bool {
        self.cmd(&["has-session", "-t", session]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The text in `line` below the header cell `column` of `header`
/// (screen columns, not bytes).
fn cell_below(header: &str, line: &str, column: &str) -> Option<String> {
    let h: Vec<char> = header.chars().collect();
    let c: Vec<char> = column.chars().collect();
    let at = h.windows(c.len()).position(|w| w == c.as_slice())?;
    let text: String = line.chars().skip(at).take_while(|ch| *ch != ' ').collect();
    Some(text)
}

/// The value of `column` in the table row (below the header holding
/// `header_mark`) whose first cell is `first`.
fn table_value(screen: &str, header_mark: &str, first: &str, column: &str) -> Option<String> {
    let lines: Vec<&str> = screen.lines().collect();
    let hi = lines
        .iter()
        .position(|l| l.contains(header_mark) && l.contains(column))?;
    let row = lines[hi + 1..]
        .iter()
        .take_while(|l| !l.starts_with('└'))
        .find(|l| {
            l.trim_start_matches('│')
                .trim_start_matches("> ")
                .trim_start()
                .split(' ')
                .next()
                == Some(first)
        })?;
    cell_below(lines[hi], row, column)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_live_connection_closes_it_and_quits_on_q() {
    let program = program("tmux", "tmux");
    let tcp = vec![ListenSpec::new("127.0.0.1:0".parse().expect("addr"))];
    let s = TestServer::start_full(
        tempfile::tempdir().expect("tempdir"),
        |y| y,
        move |c| {
            c.apisix.enable_control = true;
            c.apisix.control = ListenAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
            if let Some(sp) = c.apisix.stream_proxy.as_mut() {
                sp.tcp = tcp;
            }
        },
    )
    .await;
    let control: SocketAddr = s
        .server
        .as_ref()
        .expect("server")
        .control_addr()
        .expect("control API enabled");
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"server_port": s.tcp[0].port(),
        "upstream": {"nodes": {echo.addr.to_string(): 1}, "type": "roundrobin"}}),
    )
    .await;
    let mut held = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect to proxy");
    assert_eq!(roundtrip(&mut held, b"hello top").await, b"hello top");

    let dir = tempfile::tempdir().expect("tempdir");
    let rc_file = dir.path().join("rc");
    let err_file = dir.path().join("stderr");
    let tmux = Tmux {
        program,
        socket: format!("apisix-stream-top-test-{}", std::process::id()),
    };
    let session = "top";
    let shell = format!(
        "'{}' top --control-url http://{control} --interval 200ms 2>'{}'; echo $? >'{}'",
        bin().display(),
        err_file.display(),
        rc_file.display()
    );
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "120",
        "-y",
        "40",
        &shell,
    ]);
    assert!(
        started.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&started.stderr)
    );

    let node = echo.addr.to_string();
    let mut screen = String::new();
    let shown = eventually(20, async || {
        screen = tmux.capture(session);
        let route_active = table_value(&screen, "MATCH", "1", "ACTIVE");
        let node_active = table_value(&screen, "HEALTH", &node, "ACTIVE");
        route_active.as_deref() == Some("1") && node_active.as_deref() == Some("1")
    })
    .await;
    assert!(
        shown,
        "top never showed route 1 with 1 active connection on {node}:\n{screen}\nstderr: {}",
        read(&err_file)
    );
    println!("top at 120x40:\n{screen}");
    assert!(screen.contains(&format!("http://{control}")), "{screen}");
    assert!(!screen.contains("disconnected"), "{screen}");

    // Close the connection from the dashboard: connections pane, k, then y.
    tmux.cmd(&["send-keys", "-t", session, "Tab", "Tab", "k"]);
    wait_for(&tmux, session, "? y/n").await;
    tmux.cmd(&["send-keys", "-t", session, "y"]);
    let mut buf = [0u8; 16];
    let n = within(5, tokio::io::AsyncReadExt::read(&mut held, &mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the held connection was closed");
    wait_for(&tmux, session, "closed connection").await;

    tmux.cmd(&["send-keys", "-t", session, "q"]);
    assert!(
        eventually(5, async || !tmux.alive(session)).await,
        "top did not quit on q:\n{}",
        tmux.capture(session)
    );
    assert_eq!(
        read(&rc_file).trim(),
        "0",
        "exit status; stderr: {}",
        read(&err_file)
    );
    drop(held);
}

/// Wait until the pane shows `text`.
async fn wait_for(tmux: &Tmux, session: &str, text: &str) {
    let mut screen = String::new();
    let shown = eventually(10, async || {
        screen = tmux.capture(session);
        screen.contains(text)
    })
    .await;
    assert!(shown, "no {text:?} on screen:\n{screen}");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
