//! Tests of the dashboard without a terminal: rate math, sorting, selection
//! and keys as state transitions, and frames drawn on ratatui's TestBackend.

use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::app::*;
use super::{control_base_url, parse_interval, ui};

const STATS: &str = r#"{
  "uptime_s": 42, "active": 3, "total": 120, "version": "0.1.0",
  "memory_rss_bytes": 12345678, "extra_field": {"ignored": true},
  "routes": [
    {"id": "1", "active": 2, "total": 100, "bytes_in": 1024, "bytes_out": 2048,
     "udp_sessions": 0, "connect_failures": 0, "summary": "server_port=9100 remote_addr=127.0.0.1"},
    {"id": "10", "active": 1, "total": 20, "bytes_in": 10, "bytes_out": 20,
     "udp_sessions": 0, "connect_failures": 4},
    {"id": "2", "active": 0, "total": 0, "bytes_in": 0, "bytes_out": 0,
     "udp_sessions": 0, "connect_failures": 0, "summary": "server_port=9101"}
  ],
  "nodes": [
    {"route_id": "1", "upstream_id": null, "node": "127.0.0.1:1995", "active": 2, "total": 100,
     "bytes_in": 1024, "bytes_out": 2048, "connect_failures": 0, "healthy": true},
    {"route_id": "1", "upstream_id": null, "node": "127.0.0.1:1996", "active": 0, "total": 0,
     "bytes_in": 0, "bytes_out": 0, "connect_failures": 3, "healthy": false},
    {"route_id": "10", "upstream_id": "u1", "node": "10.0.0.9:3306", "active": 1, "total": 20,
     "bytes_in": 10, "bytes_out": 20, "connect_failures": 4, "healthy": null}
  ]
}"#;

const CONNS: &str = r#"{"connections": [
  {"id": 12, "protocol": "tcp", "client": "127.0.0.1:5555", "listener": "0.0.0.0:9100",
   "route_id": "1", "node": "127.0.0.1:1995", "bytes_in": 10, "bytes_out": 20, "age_s": 3.5, "sni": null},
  {"id": 13, "protocol": "udp", "client": "127.0.0.1:6666", "listener": "0.0.0.0:9200",
   "route_id": "10", "node": null, "bytes_in": 5000, "bytes_out": 0, "age_s": 1.0, "sni": null},
  {"id": 9, "protocol": "tcp", "client": "127.0.0.1:7777", "listener": "0.0.0.0:9100",
   "route_id": "1", "node": "127.0.0.1:1995", "bytes_in": 1, "bytes_out": 1, "age_s": 90.0}
]}"#;

fn stats() -> Stats {
    serde_json::from_str(STATS).unwrap()
}

fn conns() -> Vec<Connection> {
    serde_json::from_str::<ConnectionList>(CONNS)
        .unwrap()
        .connections
}

fn sample(at: Instant, stats: Stats) -> Sample {
    Sample {
        at,
        stats: Ok(stats),
        connections: Ok(conns()),
    }
}

fn loaded() -> App {
    let mut app = App::new("http://127.0.0.1:9090");
    app.ingest(sample(Instant::now(), stats()));
    app
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// The rendered line that contains `needle`.
fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

#[test]
fn rate_of_a_counter() {
    let t0 = Instant::now();
    let mut r = Rate::default();
    assert_eq!(r.update(100, t0, false), 0.0, "one sample gives no rate");
    assert_eq!(r.update(300, t0 + Duration::from_secs(2), false), 100.0);
    assert_eq!(r.update(300, t0 + Duration::from_secs(3), false), 0.0);
    // Same instant again: keep the last rate rather than divide by zero.
    assert_eq!(r.update(400, t0 + Duration::from_secs(3), false), 0.0);
}

#[test]
fn a_counter_that_goes_down_restarted() {
    let t0 = Instant::now();
    let mut r = Rate::default();
    r.update(1_000_000, t0, false);
    // Server restarted: 50 bytes since, over 1s; never negative.
    assert_eq!(r.update(50, t0 + Duration::from_secs(1), false), 50.0);
    assert_eq!(r.update(150, t0 + Duration::from_secs(2), false), 100.0);
}

#[test]
fn uptime_going_down_rebases_every_counter() {
    let t0 = Instant::now();
    let mut app = App::new("x");
    let mut s = stats();
    app.ingest(sample(t0, s.clone()));
    // Restarted and already past the old byte count: without the uptime
    // check this would read as 1024 bytes in 1s, not 2048.
    s.uptime_s = 1.0;
    s.routes[0].bytes_in = 2048;
    s.total = 1;
    app.ingest(sample(t0 + Duration::from_secs(1), s));
    assert_eq!(app.route_rates("1").bytes_in.per_sec(), 2048.0);
    assert_eq!(app.conns_rate.per_sec(), 1.0);
    assert!(app.in_rate >= 0.0 && app.out_rate >= 0.0);
}

#[test]
fn route_rates_and_totals() {
    let t0 = Instant::now();
    let mut app = App::new("x");
    app.ingest(sample(t0, stats()));
    let mut s = stats();
    s.uptime_s += 2.0;
    s.routes[0].bytes_in += 2000;
    s.routes[0].bytes_out += 4000;
    s.routes[0].total += 10;
    s.routes[1].bytes_in += 200;
    s.nodes[0].bytes_in += 2000;
    app.ingest(sample(t0 + Duration::from_secs(2), s));
    let r = app.route_rates("1");
    assert_eq!(r.bytes_in.per_sec(), 1000.0);
    assert_eq!(r.bytes_out.per_sec(), 2000.0);
    assert_eq!(r.conns.per_sec(), 5.0);
    assert_eq!(app.in_rate, 1100.0);
    assert_eq!(app.out_rate, 2000.0);
    assert_eq!(
        app.node_rates("1", "127.0.0.1:1995").bytes_in.per_sec(),
        1000.0
    );
    assert_eq!(app.history.back().copied(), Some(3100));
}

#[test]
fn a_deleted_route_is_no_negative_spike() {
    let t0 = Instant::now();
    let mut app = App::new("x");
    app.ingest(sample(t0, stats()));
    let mut s = stats();
    s.routes.remove(0);
    app.ingest(sample(t0 + Duration::from_secs(1), s));
    assert_eq!(app.in_rate, 0.0);
    assert_eq!(app.out_rate, 0.0);
    assert_eq!(app.history.back().copied(), Some(0));
}

#[test]
fn unknown_and_missing_fields_are_tolerated() {
    let s: Stats =
        serde_json::from_str(r#"{"uptime_s": 1.5, "active": 0, "total": 0, "new": [1]}"#).unwrap();
    assert!(s.routes.is_empty() && s.version.is_none());
}

#[test]
fn sorting() {
    let mut app = loaded();
    let ids = |app: &App| {
        app.routes()
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&app), ["1", "2", "10"], "numeric ids in numeric order");
    app.handle_key(Key::Char('s'));
    assert_eq!(app.route_sort, RouteSort::Active);
    assert_eq!(ids(&app), ["1", "10", "2"]);

    app.pane = Pane::Connections;
    let conn_ids = |app: &App| app.connections().iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(conn_ids(&app), [13, 12, 9], "newest first");
    app.handle_key(Key::Char('s'));
    assert_eq!(conn_ids(&app), [13, 12, 9], "biggest first");
    assert_eq!(app.conn_sort, ConnSort::Biggest);
    app.connections[2].bytes_out = 1 << 20;
    assert_eq!(conn_ids(&app), [9, 13, 12]);

    app.pane = Pane::Nodes;
    app.handle_key(Key::Char('s'));
    app.handle_key(Key::Char('s'));
    assert_eq!(app.node_sort, NodeSort::Failures);
    let nodes: Vec<_> = app.nodes().iter().map(|n| n.node.clone()).collect();
    assert_eq!(nodes, ["127.0.0.1:1996", "127.0.0.1:1995"]);
}

#[test]
fn selection_follows_items_and_filters_nodes() {
    let mut app = loaded();
    assert_eq!(app.selected_route.as_deref(), Some("1"));
    assert_eq!(app.nodes().len(), 2, "only route 1's nodes");
    app.handle_key(Key::Up);
    assert_eq!(
        app.selected_route.as_deref(),
        Some("1"),
        "clamped at the top"
    );
    app.handle_key(Key::Down);
    app.handle_key(Key::Down);
    assert_eq!(app.selected_route.as_deref(), Some("10"));
    app.handle_key(Key::Down);
    assert_eq!(
        app.selected_route.as_deref(),
        Some("10"),
        "clamped at the end"
    );
    let nodes: Vec<_> = app.nodes().iter().map(|n| n.node.clone()).collect();
    assert_eq!(nodes, ["10.0.0.9:3306"]);
    assert_eq!(app.selected_node.as_deref(), Some("10.0.0.9:3306"));

    // Re-sorting keeps the same route selected, at its new row.
    app.handle_key(Key::Char('s'));
    assert_eq!(app.selected_route.as_deref(), Some("10"));
    assert_eq!(app.route_index(), Some(1));

    // The selected route disappears: the first one is selected.
    let mut s = stats();
    s.routes.retain(|r| r.id != "10");
    app.ingest(sample(Instant::now(), s));
    assert_eq!(app.selected_route.as_deref(), Some("1"));
}

#[test]
fn keys_switch_panes_pause_and_quit() {
    let mut app = loaded();
    assert_eq!(app.pane, Pane::Routes);
    app.handle_key(Key::Tab);
    assert_eq!(app.pane, Pane::Nodes);
    app.handle_key(Key::Tab);
    assert_eq!(app.pane, Pane::Connections);
    app.handle_key(Key::Tab);
    assert_eq!(app.pane, Pane::Routes);
    app.handle_key(Key::BackTab);
    assert_eq!(app.pane, Pane::Connections);

    assert_eq!(app.handle_key(Key::Char('p')), Action::None);
    assert!(app.paused);
    let before = app.stats.clone();
    app.ingest(Sample {
        at: Instant::now(),
        stats: Err("connection refused".into()),
        connections: Ok(vec![]),
    });
    assert_eq!(app.stats, before, "paused: samples are dropped");
    assert_eq!(app.link, Link::Up);
    app.handle_key(Key::Char('p'));
    assert!(!app.paused);

    assert_eq!(app.handle_key(Key::Char('q')), Action::Quit);
    assert_eq!(app.handle_key(Key::Esc), Action::Quit);
    assert_eq!(app.handle_key(Key::CtrlC), Action::Quit);
}

#[test]
fn close_asks_first() {
    let mut app = loaded();
    // Only from the connections pane.
    assert_eq!(app.handle_key(Key::Char('k')), Action::None);
    assert_eq!(app.confirm_close, None);

    app.pane = Pane::Connections;
    app.handle_key(Key::Down);
    assert_eq!(app.selected_conn, Some(12));
    assert_eq!(app.handle_key(Key::Char('k')), Action::None);
    assert_eq!(app.confirm_close, Some(12));
    // No: nothing is closed, and `n` does not act as a key of its own.
    assert_eq!(app.handle_key(Key::Char('n')), Action::None);
    assert_eq!(app.confirm_close, None);
    // Even q only cancels while a confirmation is pending.
    app.handle_key(Key::Char('k'));
    assert_eq!(app.handle_key(Key::Char('q')), Action::None);

    app.handle_key(Key::Char('k'));
    assert_eq!(app.handle_key(Key::Char('y')), Action::Close(12));
    app.close_done(12, Ok(()));
    assert!(app.connections.iter().all(|c| c.id != 12));
    assert_ne!(app.selected_conn, Some(12));
    assert_eq!(app.message.as_deref(), Some("closed connection 12"));
    app.close_done(99, Err("404 Not Found: connection not found".into()));
    assert!(app.message.as_deref().unwrap().contains("not found"));
}

#[test]
fn intervals() {
    assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
    assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_interval("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_interval("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_interval("1h").unwrap(), Duration::from_secs(3600));
    for bad in ["", "s", "2h", "1d", "10ms", "-1s", "fast"] {
        assert!(parse_interval(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn control_urls() {
    assert_eq!(
        control_base_url("127.0.0.1:9090").unwrap(),
        "http://127.0.0.1:9090"
    );
    assert_eq!(
        control_base_url("https://ctl.example:9443/").unwrap(),
        "https://ctl.example:9443"
    );
    for bad in ["ftp://x", "http://", "http://[::1"] {
        let e = control_base_url(bad).unwrap_err().to_string();
        assert!(e.contains("--control-url"), "{e}");
    }
}

#[test]
fn number_formats() {
    assert_eq!(ui::bytes(0.0), "0B");
    assert_eq!(ui::bytes(1023.0), "1023B");
    assert_eq!(ui::bytes(1536.0), "1.5K");
    assert_eq!(ui::bytes(50.0 * 1024.0 * 1024.0), "50M");
    assert_eq!(ui::duration(42.3), "42s");
    assert_eq!(ui::duration(3725.0), "1h02m");
    assert_eq!(ui::duration(90061.0), "1d01h");
}

#[test]
fn renders_at_80x24() {
    let app = loaded();
    let screen = render(&app, 80, 24);
    println!("{screen}");
    assert!(screen.contains("http://127.0.0.1:9090"));
    assert!(screen.contains("up 42s"));
    assert!(screen.contains("active 3"));
    let route = line_with(&screen, "server_port=9100");
    assert!(route.contains("│1 ") || route.contains("1  "), "{route}");
    assert!(
        route.split_whitespace().any(|w| w == "2"),
        "active 2: {route}"
    );
    let node = line_with(&screen, "127.0.0.1:1995 ");
    assert!(node.contains(" up "), "{node}");
    assert!(line_with(&screen, "127.0.0.1:1996").contains("DOWN"));
    assert!(screen.contains("nodes of route 1"));
    assert!(screen.contains("127.0.0.1:5555"));
    assert!(screen.contains("q quit"));
    assert!(!screen.contains("disconnected"));
}

#[test]
fn renders_at_120x40() {
    let mut app = loaded();
    app.pane = Pane::Connections;
    app.handle_key(Key::Char('k'));
    let screen = render(&app, 120, 40);
    println!("{screen}");
    assert!(screen.contains("apisix-stream top"));
    assert!(screen.contains("v0.1.0"));
    assert!(screen.contains("rss 12M"));
    for id in ["server_port=9101", "127.0.0.1:1995", "127.0.0.1:7777", "10"] {
        assert!(screen.contains(id), "{id}");
    }
    assert!(screen.contains("close connection 13 from 127.0.0.1:6666? y/n"));
}

#[test]
fn a_lost_server_shows_a_banner_and_keeps_the_figures() {
    let mut app = App::new("http://127.0.0.1:9090");
    app.ingest(Sample {
        at: Instant::now(),
        stats: Err("Connection refused (os error 111)".into()),
        connections: Err("Connection refused (os error 111)".into()),
    });
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(screen.contains("disconnected, retrying"), "{screen}");
    }
    let mut app = loaded();
    app.ingest(Sample {
        at: Instant::now(),
        stats: Err("timed out".into()),
        connections: Err("timed out".into()),
    });
    let screen = render(&app, 80, 24);
    assert!(screen.contains("disconnected, retrying (timed out)"));
    assert!(screen.contains("server_port=9100"), "last figures stay");
    // Back again.
    app.ingest(sample(Instant::now(), stats()));
    assert!(!render(&app, 80, 24).contains("disconnected"));
}

#[test]
fn tiny_and_empty_screens_do_not_panic() {
    let app = App::new("http://127.0.0.1:9090");
    assert!(render(&app, 80, 24).contains("connecting"));
    let app = loaded();
    for (w, h) in [(1, 1), (20, 5), (40, 10)] {
        render(&app, w, h);
    }
}

#[test]
fn protocol_routes_show_requests_per_second() {
    let t0 = Instant::now();
    let mut app = App::new("x");
    let mut s = stats();
    s.routes[1].requests = Some(100);
    app.ingest(sample(t0, s.clone()));
    s.uptime_s += 2.0;
    s.routes[1].requests = Some(1100);
    app.ingest(sample(t0 + Duration::from_secs(2), s));
    assert_eq!(app.route_rates("10").requests.per_sec(), 500.0);
    let screen = render(&app, 120, 40);
    assert!(screen.contains("REQ/S"), "{screen}");
    assert!(line_with(&screen, "server_port=9100").contains(" - "));
    assert!(
        line_with(&screen, "500.0").starts_with(['│', ' ', '>']),
        "{screen}"
    );
}
