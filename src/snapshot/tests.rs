//! Snapshot compilation, route precedence, health checkers attached at
//! build, and objects the build cannot serve.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::health::registry::Registry;
use crate::store::{Dump, Entry};

fn entry(kind: Kind, id: &str, v: Value) -> Entry {
    Entry {
        kind,
        id: id.into(),
        value: Arc::new(v),
        create_rev: 1,
        mod_rev: 1,
    }
}

fn route(id: &str, mut v: Value) -> Entry {
    v["upstream"] = json!({"nodes": {"127.0.0.1:1995": 1}});
    entry(Kind::StreamRoute, id, v)
}

fn dump(mut entries: Vec<Entry>) -> Dump {
    entries.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Dump {
        revision: 1,
        entries,
    }
}

fn conn(remote: &str, server: &str, port: u16, sni: Option<&str>) -> ConnInfo {
    ConnInfo {
        remote_addr: remote.parse::<IpAddr>().expect("ip"),
        remote_port: 40000,
        server_addr: server.parse::<IpAddr>().expect("ip"),
        server_port: port,
        mqtt_client_id: None,
        sni: sni.map(str::to_string),
    }
}

fn winner(s: &Snapshot, c: &ConnInfo) -> Option<String> {
    s.match_route(c).map(|r| r.id.clone())
}

#[test]
fn filters_match_and_reject() {
    let s = Snapshot::build(
        &dump(vec![
            route("1", json!({"remote_addr": "127.0.0.1"})),
            route(
                "2",
                json!({"server_addr": "127.0.0.2", "server_port": 2000}),
            ),
            route("3", json!({"remote_addr": "::1"})),
        ]),
        None,
        &Carry::default(),
    );
    assert_eq!(
        winner(&s, &conn("127.0.0.1", "127.0.0.1", 9100, None)).as_deref(),
        Some("1")
    );
    assert_eq!(
        winner(&s, &conn("127.0.0.3", "127.0.0.1", 9100, None)),
        None
    );
    assert_eq!(
        winner(&s, &conn("127.0.0.3", "127.0.0.2", 2000, None)).as_deref(),
        Some("2")
    );
    assert_eq!(
        winner(&s, &conn("127.0.0.3", "127.0.0.1", 2000, None)),
        None
    );
    assert_eq!(
        winner(&s, &conn("::1", "::1", 9100, None)).as_deref(),
        Some("3")
    );
    assert_eq!(winner(&s, &conn("::2", "::1", 9100, None)), None);
}

#[test]
fn precedence_is_specific_first_then_id_order() {
    let s = Snapshot::build(
        &dump(vec![
            route("a", json!({})),
            route("b", json!({"remote_addr": "127.0.0.0/8"})),
            route("c", json!({"remote_addr": "127.0.0.1/32"})),
            route("d", json!({"server_addr": "127.0.0.1"})),
            route("e", json!({"server_port": 9100})),
            route(
                "f",
                json!({"server_port": 9100, "remote_addr": "127.0.0.1"}),
            ),
            route(
                "g",
                json!({"server_port": 9100, "remote_addr": "127.0.0.1"}),
            ),
        ]),
        None,
        &Carry::default(),
    );
    let c = conn("127.0.0.1", "127.0.0.1", 9100, None);
    assert_eq!(
        winner(&s, &c).as_deref(),
        Some("f"),
        "port + longest remote, smaller id"
    );
    let c = conn("127.0.0.1", "127.0.0.1", 9101, None);
    assert_eq!(
        winner(&s, &c).as_deref(),
        Some("d"),
        "server_addr beats remote_addr"
    );
    let c = conn("127.0.0.1", "127.0.0.9", 9101, None);
    assert_eq!(winner(&s, &c).as_deref(), Some("c"));
    let c = conn("127.0.0.5", "127.0.0.9", 9101, None);
    assert_eq!(winner(&s, &c).as_deref(), Some("b"));
    let c = conn("10.0.0.5", "127.0.0.9", 9101, None);
    assert_eq!(winner(&s, &c).as_deref(), Some("a"));
    let why = s.explain(&conn("127.0.0.1", "127.0.0.1", 9100, None));
    assert_eq!(why[0].0.id, "f");
    assert!(why[0].1.is_none());
    let g = why.iter().find(|(r, _)| r.id == "g").expect("g explained");
    assert!(
        g.1.as_deref().unwrap_or_default().contains("route f"),
        "{g:?}"
    );
}

#[test]
fn sni_routes_exact_then_wildcard_then_plain() {
    let s = Snapshot::build(
        &dump(vec![
            route("1", json!({"sni": "a.test.com"})),
            route("2", json!({"sni": "*.test.com"})),
            route("3", json!({})),
            route("4", json!({"sni": "*"})),
            route(
                "5",
                json!({"sni": "a.test.com", "remote_addr": "127.0.0.3"}),
            ),
        ]),
        None,
        &Carry::default(),
    );
    let w = |sni| winner(&s, &conn("127.0.0.1", "127.0.0.1", 9100, sni));
    assert_eq!(w(Some("a.test.com")).as_deref(), Some("1"));
    assert_eq!(w(Some("b.test.com")).as_deref(), Some("2"));
    assert_eq!(
        w(Some("x.b.test.com")).as_deref(),
        Some("2"),
        "route wildcards span labels"
    );
    assert_eq!(w(Some("other.org")).as_deref(), Some("4"));
    assert_eq!(
        w(None).as_deref(),
        Some("3"),
        "plain connections skip SNI routes"
    );
    // An exact route whose address filter fails falls back to the wildcard.
    let c = conn("127.0.0.3", "127.0.0.1", 9100, Some("a.test.com"));
    assert_eq!(winner(&s, &c).as_deref(), Some("5"));
}

#[test]
fn upstream_id_wins_and_missing_upstreams_are_reported() {
    let s = Snapshot::build(
        &dump(vec![
            entry(
                Kind::Upstream,
                "u1",
                json!({"nodes": {"127.0.0.1:3306": 1}}),
            ),
            entry(
                Kind::StreamRoute,
                "1",
                json!({"upstream_id": "u1", "upstream": {"nodes": {"127.0.0.1:1": 1}}}),
            ),
            entry(Kind::StreamRoute, "2", json!({"upstream_id": "gone"})),
            entry(Kind::StreamRoute, "3", json!({"server_port": 1})),
        ]),
        None,
        &Carry::default(),
    );
    let by_id = |id: &str| {
        s.routes()
            .iter()
            .find(|r| r.id == id)
            .expect("route")
            .clone()
    };
    let up = by_id("1").upstream.clone().expect("upstream");
    assert_eq!(up.balancer.backends()[0].port, 3306);
    assert!(by_id("2")
        .upstream
        .as_ref()
        .is_err_and(|e| e.contains("gone")));
    assert!(by_id("3").upstream.is_err());
}

#[test]
fn unchanged_upstreams_are_reused_across_builds() {
    let d1 = dump(vec![
        entry(
            Kind::Upstream,
            "u1",
            json!({"nodes": {"127.0.0.1:3306": 1}}),
        ),
        route("1", json!({})),
    ]);
    let s1 = Snapshot::build(&d1, None, &Carry::default());
    let mut d2 = d1.clone();
    d2.entries.push(route("2", json!({"server_port": 5})));
    let s2 = Snapshot::build(&d2, Some(&s1), &Carry::default());
    assert!(Arc::ptr_eq(
        s1.upstream("u1").expect("u1"),
        s2.upstream("u1").expect("u1")
    ));
    let r1 = |s: &Snapshot| s.routes()[0].upstream.clone().expect("inline");
    assert!(Arc::ptr_eq(&r1(&s1), &r1(&s2)));
}

#[test]
fn timeouts_retries_and_hash_keys() {
    let none = tls::TlsCerts::default();
    let u = UpstreamRt::build(
        "upstreams/1".into(),
        Some("1".into()),
        &json!({"nodes": {"127.0.0.1:1": 1, "127.0.0.1:2": 1, "127.0.0.1:3": 1},
                "timeout": {"connect": 0.5, "send": 3, "read": 7},
                "type": "chash", "hash_on": "vars_combinations", "key": "$remote_addr:$remote_port"}),
        &none,
        &crate::tls::Trust::default(),
    )
    .expect("builds");
    assert_eq!(u.connect_timeout, Duration::from_millis(500));
    assert_eq!(u.idle_timeout, Duration::from_secs(7));
    assert_eq!(u.retries, 2, "unset retries = nodes - 1");
    let c = conn("127.0.0.1", "127.0.0.1", 9100, None);
    assert_eq!(u.key_for(&c), "127.0.0.1:40000");
    let d = UpstreamRt::build(
        "x".into(),
        None,
        &json!({"nodes": {"127.0.0.1:1": 1}, "retries": 0}),
        &none,
        &crate::tls::Trust::default(),
    )
    .expect("builds");
    assert_eq!(
        (d.retries, d.connect_timeout, d.idle_timeout),
        (0, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT)
    );
    assert_eq!(d.key_for(&c), "127.0.0.1");
}

#[test]
fn ten_thousand_routes_index_by_port() {
    let mut entries = Vec::new();
    for i in 0..10_000u32 {
        let port = 10_000 + (i % 5000) as u16;
        entries.push(route(
            &format!("r{i:05}"),
            json!({"server_port": port, "remote_addr": format!("127.0.{}.0/24", i / 5000)}),
        ));
    }
    let s = Snapshot::build(&dump(entries), None, &Carry::default());
    assert_eq!(s.route_count(), 10_000);
    assert_eq!(
        winner(&s, &conn("127.0.1.7", "127.0.0.1", 10_042, None)).as_deref(),
        Some("r05042")
    );
    assert_eq!(
        winner(&s, &conn("127.0.0.7", "127.0.0.1", 10_042, None)).as_deref(),
        Some("r00042")
    );
    assert_eq!(
        winner(&s, &conn("127.0.2.7", "127.0.0.1", 10_042, None)),
        None
    );
    // Only the two routes of that port are considered.
    assert_eq!(
        s.explain(&conn("127.0.0.7", "127.0.0.1", 10_042, None))
            .len(),
        2
    );
}

#[tokio::test]
async fn checkers_are_attached_while_building_and_probed_while_in_force() {
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let carry = Carry::new(Registry::new(true, tasks.clone(), cancel.clone()));
    // Intervals long enough that no probe runs during the test.
    let checks = json!({"active": {"type": "tcp", "healthy": {"interval": 3600},
        "unhealthy": {"interval": 3600}}});
    let with_checks =
        |nodes: Value| json!({"upstream": {"nodes": nodes, "checks": checks.clone()}});
    let checked_route = |nodes: Value| entry(Kind::StreamRoute, "1", with_checks(nodes));
    let d1 = dump(vec![
        checked_route(json!({"127.0.0.1:1": 1, "127.0.0.1:2": 1})),
        entry(
            Kind::StreamRoute,
            "2",
            json!({"upstream": {"nodes": {"127.0.0.1:3": 1}}}),
        ),
        entry(
            Kind::Upstream,
            "u1",
            json!({"nodes": {"127.0.0.1:4": 1}, "checks": checks.clone()}),
        ),
    ]);
    let s1 = Snapshot::build(&d1, None, &carry);
    let checker = |s: &Snapshot| {
        s.routes()[0]
            .upstream
            .as_ref()
            .expect("upstream")
            .health()
            .cloned()
            .expect("checker attached by the build")
    };
    let c1 = checker(&s1);
    assert!(s1.routes()[1]
        .upstream
        .as_ref()
        .is_ok_and(|u| u.health().is_none()));
    assert!(
        s1.upstream("u1").expect("u1").health().is_none(),
        "an upstream no route names gets no checker"
    );
    assert_eq!(s1.checkers().count(), 1);
    assert!(s1.checkers_changed());
    carry.health.apply(s1.checkers());
    assert_eq!(carry.health.len(), 1, "probes run for the checker in force");
    for _ in 0..3 {
        c1.report_try_failure(0, false);
    }
    assert!(!c1.healthy(0), "passive failures took the first node down");

    // Unrelated change: the upstream and its checker are reused as they are.
    let mut d2 = d1.clone();
    d2.entries.push(route("3", json!({"server_port": 3})));
    let s2 = Snapshot::build(&d2, Some(&s1), &carry);
    assert!(Arc::ptr_eq(&c1, &checker(&s2)));
    assert!(!s2.checkers_changed(), "probes need no new plan");
    carry.health.apply(s2.checkers());
    assert_eq!(carry.health.len(), 1);

    // Nodes change, checks do not: a new checker keeping the unchanged
    // target's state, in force as soon as the snapshot is.
    let d3 = dump(vec![
        checked_route(json!({"127.0.0.1:1": 1, "127.0.0.1:5": 1})),
        entry(Kind::StreamRoute, "4", json!({"upstream_id": "u1"})),
        entry(
            Kind::Upstream,
            "u1",
            json!({"nodes": {"127.0.0.1:4": 1}, "checks": checks.clone()}),
        ),
    ]);
    let s3 = Snapshot::build(&d3, Some(&s2), &carry);
    let c3 = checker(&s3);
    assert!(s3.checkers_changed());
    assert!(!Arc::ptr_eq(&c1, &c3));
    assert!(!c3.healthy(0), "unchanged target keeps its state");
    assert!(c3.healthy(1));
    assert!(
        s3.upstream("u1").expect("u1").health().is_some(),
        "named by a route now: rebuilt with a checker"
    );
    assert!(c1.healthy(1), "the old snapshot is left as it was");
    carry.health.apply(s3.checkers());
    assert_eq!(carry.health.len(), 2);

    // Routes deleted: their checkers' probes stop once that is in force.
    let s4 = Snapshot::build(&dump(vec![]), Some(&s3), &carry);
    assert_eq!(s4.checkers().count(), 0);
    assert!(s4.checkers_changed());
    carry.health.apply(s4.checkers());
    assert!(carry.health.is_empty());
    tasks.close();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .expect("every probe task ended");
    cancel.cancel();
}

#[test]
fn no_checkers_when_health_checks_are_off() {
    let carry = Carry::new(Registry::new(
        false,
        TaskTracker::new(),
        CancellationToken::new(),
    ));
    let d = dump(vec![entry(
        Kind::StreamRoute,
        "1",
        json!({"upstream": {"nodes": {"127.0.0.1:1": 1},
            "checks": {"active": {"type": "tcp"}}}}),
    )]);
    let s = Snapshot::build(&d, None, &carry);
    assert_eq!(s.route_count(), 1);
    assert_eq!(s.checkers().count(), 0);
}

#[test]
fn objects_that_cannot_be_served_are_listed_with_why() {
    let s = Snapshot::build(
        &dump(vec![
            entry(
                Kind::Ssl,
                "s1",
                json!({"id": "s1", "cert": "$env://APISIX_STREAM_UNSET_CERT",
                    "key": "$env://APISIX_STREAM_UNSET_KEY", "snis": ["a.test"]}),
            ),
            entry(
                Kind::Upstream,
                "u1",
                json!({"nodes": {"127.0.0.1:1": 1}, "scheme": "tls",
                    "tls": {"client_cert_id": "nope"}}),
            ),
            route("ok", json!({})),
            route(
                "bad-plugin",
                json!({"plugins": {"ip-restriction": {"whitelist": ["not an ip"]}}}),
            ),
            entry(
                Kind::StreamRoute,
                "bad-tls",
                json!({"upstream": {"nodes": {"127.0.0.1:1": 1}, "scheme": "tls",
                    "tls": {"client_cert_id": "nope"}}}),
            ),
            entry(Kind::StreamRoute, "by-id", json!({"upstream_id": "u1"})),
        ]),
        None,
        &Carry::default(),
    );
    assert!(s.rejected(Kind::Ssl, "s1").is_some());
    assert!(s
        .rejected(Kind::Upstream, "u1")
        .is_some_and(|why| why.contains("[nope]")));
    assert!(s.rejected(Kind::StreamRoute, "bad-plugin").is_some());
    assert!(s
        .rejected(Kind::StreamRoute, "bad-tls")
        .is_some_and(|why| why.contains("[nope]")));
    assert_eq!(s.rejected(Kind::StreamRoute, "ok"), None);
    assert_eq!(
        s.rejected(Kind::StreamRoute, "by-id"),
        None,
        "a stored upstream's problem is the upstream's"
    );
    assert_eq!(s.rejected(Kind::StreamRoute, "missing"), None);
    let routes = s.routes();
    let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["bad-plugin", "bad-tls", "by-id", "ok"],
        "a route with a bad plugin keeps its filters"
    );
    assert!(
        s.routes()[0].upstream.is_err(),
        "and refuses its connections"
    );
}

/// `e` written again at revision `rev` with value `v`.
fn rewrite(e: &Entry, rev: u64, v: Value) -> Entry {
    Entry {
        value: Arc::new(v),
        mod_rev: rev,
        ..e.clone()
    }
}

fn at(rev: u64, mut entries: Vec<Entry>) -> Dump {
    entries.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    Dump {
        revision: rev,
        entries,
    }
}

fn same_route(a: &Snapshot, b: &Snapshot, id: &str) -> bool {
    match (a.route(id), b.route(id)) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

#[test]
fn a_changed_upstream_recompiles_only_the_routes_naming_it() {
    let carry = Carry::default();
    let u1 = entry(
        Kind::Upstream,
        "u1",
        json!({"nodes": {"127.0.0.1:1001": 1}}),
    );
    let u2 = entry(
        Kind::Upstream,
        "u2",
        json!({"nodes": {"127.0.0.1:1002": 1}}),
    );
    let a = entry(Kind::StreamRoute, "a", json!({"upstream_id": "u1"}));
    let b = entry(Kind::StreamRoute, "b", json!({"upstream_id": "u2"}));
    let c = route("c", json!({"server_port": 9100}));
    let split = entry(
        Kind::StreamRoute,
        "d",
        json!({"upstream_id": "u2", "plugins": {"traffic-split": {"rules": [
            {"weighted_upstreams": [{"upstream_id": "u1", "weight": 1}]}]}}}),
    );
    let s1 = Snapshot::build(
        &at(
            1,
            vec![
                u1.clone(),
                u2.clone(),
                a.clone(),
                b.clone(),
                c.clone(),
                split.clone(),
            ],
        ),
        None,
        &carry,
    );
    assert_eq!(s1.route_count(), 4);

    let u1b = rewrite(&u1, 2, json!({"nodes": {"127.0.0.1:2001": 1}}));
    let s2 = Snapshot::build(
        &at(2, vec![u1b, u2.clone(), a, b, c, split]),
        Some(&s1),
        &carry,
    );
    assert!(!same_route(&s1, &s2, "a"), "a names u1: recompiled");
    assert!(!same_route(&s1, &s2, "d"), "d's traffic-split names u1");
    assert!(same_route(&s1, &s2, "b"), "b names u2 only");
    assert!(same_route(&s1, &s2, "c"), "c has its own upstream");
    let port = |s: &Snapshot, id: &str| {
        s.route(id)
            .expect("route")
            .upstream
            .as_ref()
            .expect("up")
            .balancer
            .backends()[0]
            .port
    };
    assert_eq!(port(&s2, "a"), 2001);
    assert!(Arc::ptr_eq(
        s1.upstream("u2").expect("u2"),
        s2.upstream("u2").expect("u2")
    ));
    let c = conn("127.0.0.1", "127.0.0.1", 9100, None);
    assert_eq!(winner(&s2, &c).as_deref(), Some("c"));
    let up = |s: &Snapshot| {
        s.match_route(&conn("127.0.0.1", "127.0.0.1", 1, None))
            .map(|r| r.id.clone())
    };
    assert_eq!(
        up(&s2),
        Some("a".into()),
        "the index holds the recompiled a"
    );
    assert!(Arc::ptr_eq(
        s2.match_route(&conn("127.0.0.1", "127.0.0.1", 1, None))
            .expect("a"),
        s2.route("a").expect("a")
    ));
}

#[test]
fn adds_deletes_and_refilters_match_like_a_full_build() {
    let carry = Carry::default();
    let r1 = route("1", json!({}));
    let r2 = route("2", json!({"server_port": 9100}));
    let r3 = route("3", json!({"remote_addr": "127.0.0.0/8"}));
    let r4 = route(
        "4",
        json!({"server_port": 9100, "remote_addr": "127.0.0.1"}),
    );
    let s1 = Snapshot::build(
        &at(1, vec![r1.clone(), r2.clone(), r3.clone(), r4.clone()]),
        None,
        &carry,
    );
    let conns = [
        conn("127.0.0.1", "127.0.0.1", 9100, None),
        conn("127.0.0.2", "127.0.0.1", 9100, None),
        conn("127.0.0.2", "127.0.0.1", 9200, None),
        conn("10.0.0.1", "127.0.0.1", 9200, None),
        conn("10.0.0.1", "127.0.0.1", 9100, None),
    ];
    let r0 = route(
        "0",
        json!({"server_port": 9100, "remote_addr": "127.0.0.0/24"}),
    );
    let r3b = rewrite(&r3, 2, {
        let mut v = (*r3.value).clone();
        v["remote_addr"] = json!("10.0.0.0/8");
        v
    });
    let d2 = at(2, vec![r0, r1.clone(), r3b, r4.clone()]);
    let s2 = Snapshot::build(&d2, Some(&s1), &carry);
    let full = Snapshot::build(&d2, None, &carry);
    for c in &conns {
        assert_eq!(winner(&s2, c), winner(&full, c), "{c:?}");
    }
    assert_eq!(winner(&s2, &conns[1]).as_deref(), Some("0"));
    assert_eq!(winner(&s2, &conns[3]).as_deref(), Some("3"));
    assert!(same_route(&s1, &s2, "1") && same_route(&s1, &s2, "4"));
    assert!(s2.route("2").is_none(), "deleted");

    let d3 = at(3, vec![r1, r4]);
    let s3 = Snapshot::build(&d3, Some(&s2), &carry);
    for c in &conns {
        assert_eq!(
            winner(&s3, c),
            winner(&Snapshot::build(&d3, None, &carry), c)
        );
    }
    assert_eq!(s3.route_count(), 2);
}

#[test]
fn ssl_changes_rebuild_certificates_and_the_routes_naming_them() {
    let carry = Carry::default();
    let tls_route = entry(
        Kind::StreamRoute,
        "tls",
        json!({"upstream": {"nodes": {"127.0.0.1:1": 1}, "scheme": "tls",
            "tls": {"client_cert_id": "c1"}}}),
    );
    let plain = route("plain", json!({}));
    let s1 = Snapshot::build(&at(1, vec![tls_route.clone(), plain.clone()]), None, &carry);
    assert!(s1
        .rejected(Kind::StreamRoute, "tls")
        .is_some_and(|why| why.contains("[c1]")));

    let ssl = entry(
        Kind::Ssl,
        "c1",
        json!({"id": "c1", "type": "client", "cert": "$env://APISIX_STREAM_UNSET_CERT",
            "key": "$env://APISIX_STREAM_UNSET_KEY"}),
    );
    let d2 = at(2, vec![ssl.clone(), tls_route.clone(), plain.clone()]);
    let s2 = Snapshot::build(&d2, Some(&s1), &carry);
    assert!(!Arc::ptr_eq(&s1.tls, &s2.tls), "SSL objects changed");
    assert!(!same_route(&s1, &s2, "tls"), "it names an SSL object");
    assert!(same_route(&s1, &s2, "plain"));
    assert!(s2.rejected(Kind::Ssl, "c1").is_some());

    let s3 = Snapshot::build(&at(3, vec![ssl, tls_route, plain]), Some(&s2), &carry);
    assert!(
        Arc::ptr_eq(&s2.tls, &s3.tls),
        "no SSL change: certificates kept"
    );
    assert!(same_route(&s2, &s3, "tls"));
    assert!(s3.rejected(Kind::Ssl, "c1").is_some(), "still listed");
    assert!(
        s3.rejected(Kind::StreamRoute, "tls").is_some(),
        "still listed"
    );
}

#[test]
fn a_skipped_route_is_listed_and_the_others_served_until_it_is_fixed() {
    let carry = Carry::default();
    let good = route("good", json!({}));
    let bad = route(
        "bad",
        json!({"plugins": {"ip-restriction": {"whitelist": ["not an ip"]}}}),
    );
    let garbage = route("garbage", json!({"remote_addr": "not an address"}));
    let s1 = Snapshot::build(
        &at(1, vec![good.clone(), bad.clone(), garbage.clone()]),
        None,
        &carry,
    );
    let listed = |s: &Snapshot| -> Vec<String> {
        s.skipped()
            .map(|(k, id, _)| format!("{}/{id}", k.segment()))
            .collect()
    };
    assert_eq!(listed(&s1), ["stream_routes/bad", "stream_routes/garbage"]);
    assert!(s1.skipped().all(|(_, _, why)| !why.is_empty()));
    // "bad" (filters readable) takes its clients and refuses them, never
    // handing them to "good"; "garbage" (filters unreadable) is left out.
    let c = conn("127.0.0.1", "127.0.0.1", 9100, None);
    assert_eq!(winner(&s1, &c).as_deref(), Some("bad"));
    assert!(s1.match_route(&c).is_some_and(|r| r.upstream.is_err()));
    let routes = s1.routes();
    let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["bad", "good"]);

    let s2 = Snapshot::build(
        &at(2, vec![good.clone(), bad.clone(), garbage.clone()]),
        Some(&s1),
        &carry,
    );
    assert_eq!(
        listed(&s2),
        listed(&s1),
        "unchanged: still skipped, not compiled again"
    );
    assert!(same_route(&s1, &s2, "good"));

    let fixed = rewrite(
        &bad,
        3,
        json!({"upstream": {"nodes": {"127.0.0.1:1995": 1}},
        "remote_addr": "127.0.0.1"}),
    );
    let s3 = Snapshot::build(&at(3, vec![good, fixed, garbage]), Some(&s2), &carry);
    assert_eq!(listed(&s3), ["stream_routes/garbage"]);
    assert_eq!(
        winner(&s3, &conn("127.0.0.1", "127.0.0.1", 9100, None)).as_deref(),
        Some("bad")
    );
    assert!(s3
        .match_route(&conn("127.0.0.1", "127.0.0.1", 9100, None))
        .is_some_and(|r| r.upstream.is_ok()));
}

#[test]
fn a_panic_while_compiling_one_object_is_that_objects_error() {
    let out: Result<u8, String> = build::guarded(|| panic!("cannot convert"));
    assert!(out.is_err_and(|why| why.contains("cannot convert")));
    assert_eq!(build::guarded(|| Ok::<u8, String>(3)), Ok(3));
    assert_eq!(
        build::guarded(|| Err::<u8, String>("no".into())),
        Err("no".into())
    );
}

/// Routes with their upstream's first node, skipped objects, stored
/// upstreams' first node.
type Shown = (Vec<(String, Option<u16>)>, Vec<String>, Vec<Option<u16>>);

/// Everything a snapshot shows.
fn shown(s: &Snapshot) -> Shown {
    let first = |u: &UpstreamRt| u.balancer.backends().first().map(|b| b.port);
    let routes = s
        .routes()
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                r.upstream.as_ref().ok().and_then(|u| first(u)),
            )
        })
        .collect();
    let skipped = s
        .skipped()
        .map(|(k, id, why)| format!("{k:?} {id} {why}"))
        .collect();
    let ups = ["u1", "u2"]
        .iter()
        .map(|id| s.upstream(id).and_then(|u| first(u)))
        .collect();
    (routes, skipped, ups)
}

#[test]
fn applied_updates_give_what_a_full_build_gives() {
    let carry = Carry::default();
    let up = |id: &str, port: u16| {
        entry(
            Kind::Upstream,
            id,
            json!({"nodes": {format!("127.0.0.1:{port}"): 1}}),
        )
    };
    let named = |id: &str, uid: &str, extra: Value| {
        let mut v = json!({"upstream_id": uid});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        entry(Kind::StreamRoute, id, v)
    };
    let mut store: BTreeMap<(Kind, String), Entry> = BTreeMap::new();
    let mut prev = Snapshot::empty();
    let steps: Vec<Vec<(Kind, &str, Option<Entry>)>> = vec![
        vec![
            (Kind::Upstream, "u1", Some(up("u1", 1001))),
            (Kind::StreamRoute, "a", Some(named("a", "u1", json!({})))),
            (
                Kind::StreamRoute,
                "b",
                Some(named("b", "u2", json!({"server_port": 9100}))),
            ),
            (
                Kind::StreamRoute,
                "c",
                Some(route("c", json!({"remote_addr": "127.0.0.1"}))),
            ),
        ],
        // u2 arrives: b, which named it, is served now.
        vec![(Kind::Upstream, "u2", Some(up("u2", 1002)))],
        // u1 changes: a follows; c is refiltered; a garbage route.
        vec![
            (Kind::Upstream, "u1", Some(up("u1", 2001))),
            (
                Kind::StreamRoute,
                "c",
                Some(route("c", json!({"remote_addr": "10.0.0.1"}))),
            ),
            (
                Kind::StreamRoute,
                "z",
                Some(entry(Kind::StreamRoute, "z", json!({"remote_addr": 5}))),
            ),
        ],
        // u2 goes: b refuses; a now names u2 (refused too); z removed.
        vec![
            (Kind::Upstream, "u2", None),
            (Kind::StreamRoute, "a", Some(named("a", "u2", json!({})))),
            (Kind::StreamRoute, "z", None),
        ],
        vec![(Kind::Upstream, "u2", Some(up("u2", 3002)))],
    ];
    for (i, step) in steps.into_iter().enumerate() {
        let rev = i as u64 + 1;
        let mut updates = Vec::new();
        for (kind, id, e) in step {
            let e = e.map(|mut e| {
                e.mod_rev = rev;
                e
            });
            match &e {
                Some(e) => store.insert((kind, id.to_string()), e.clone()),
                None => store.remove(&(kind, id.to_string())),
            };
            updates.push(((kind, id.to_string()), e));
        }
        let next = prev.apply(rev, updates, &carry);
        let full = Snapshot::build(&at(rev, store.values().cloned().collect()), None, &carry);
        assert_eq!(shown(&next), shown(&full), "step {rev}");
        for c in [
            conn("127.0.0.1", "127.0.0.1", 9100, None),
            conn("10.0.0.1", "127.0.0.1", 9200, None),
            conn("127.0.0.2", "127.0.0.1", 1, None),
        ] {
            assert_eq!(winner(&next, &c), winner(&full, &c), "step {rev}: {c:?}");
        }
        prev = next;
    }
    let (routes, skipped, ups) = shown(&prev);
    assert_eq!(ups, vec![Some(2001), Some(3002)]);
    assert_eq!(
        routes,
        vec![
            ("a".to_string(), Some(3002)),
            ("b".to_string(), Some(3002)),
            ("c".to_string(), Some(1995))
        ]
    );
    assert!(skipped.is_empty(), "{skipped:?}");
}
