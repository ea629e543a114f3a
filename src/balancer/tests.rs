//! Balancer behaviour across algorithms: priority groups, retries, health, least_conn guards,
//! concurrency.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;

fn node(host: &str, port: u16, weight: u32, priority: i32) -> Node {
    Node {
        host: host.to_string(),
        port,
        weight,
        priority,
    }
}

fn all_healthy(_: usize) -> bool {
    true
}

/// Picks until nothing is left, as a session retrying every node would; returns the labels.
fn exhaust(b: &Balancer, key: Option<&[u8]>, healthy: &dyn Fn(usize) -> bool) -> Vec<String> {
    let mut tried = Vec::new();
    while let Some(p) = b.pick(key, &tried, healthy) {
        assert!(!tried.contains(&p.index), "node {} returned twice", p.index);
        tried.push(p.index);
        assert!(tried.len() <= b.backends().len());
    }
    tried
        .iter()
        .map(|&i| b.backends()[i].label.clone())
        .collect()
}

/// balancing.md's example (t/stream-node/priority-balancer.t).
fn priority_nodes() -> Vec<Node> {
    vec![
        node("127.0.0.3", 1995, 2, 0),
        node("127.0.0.1", 1995, 2, 1),
        node("127.0.0.4", 1995, 1, 0),
        node("127.0.0.2", 1995, 1, 1),
        node("127.0.0.1", 1996, 1, -1),
    ]
}

#[test]
fn backend_labels_and_addrs() {
    let b = Balancer::new(
        &LbType::RoundRobin,
        &[
            node("::1", 80, 1, 0),
            node("10.0.0.1", 8080, 1, 0),
            node("example.com", 443, 1, 0),
        ],
    );
    let bs = b.backends();
    assert_eq!(bs[0].label, "[::1]:80");
    assert_eq!(bs[0].addr, Some("[::1]:80".parse().expect("addr")));
    assert_eq!(bs[1].label, "10.0.0.1:8080");
    assert_eq!(bs[1].addr, Some("10.0.0.1:8080".parse().expect("addr")));
    assert_eq!(bs[2].label, "example.com:443");
    assert_eq!(bs[2].addr, None);
    assert_eq!(b.lb_name(), "roundrobin");
}

#[test]
fn unknown_type_never_picks() {
    let b = Balancer::new(
        &LbType::Other("ewma".to_string()),
        &[node("10.0.0.1", 80, 1, 0)],
    );
    assert_eq!(b.lb_name(), "ewma");
    assert!(b.pick(None, &[], &all_healthy).is_none());
}

#[test]
fn no_nodes_and_zero_weights() {
    for lb in [LbType::RoundRobin, LbType::Chash, LbType::LeastConn] {
        let b = Balancer::new(&lb, &[]);
        assert!(b.pick(Some(b"k"), &[], &all_healthy).is_none(), "{lb:?}");
    }
    let zeros = [node("10.0.0.1", 80, 0, 0), node("10.0.0.2", 80, 0, 0)];
    for lb in [LbType::RoundRobin, LbType::Chash] {
        let b = Balancer::new(&lb, &zeros);
        assert!(b.pick(Some(b"k"), &[], &all_healthy).is_none(), "{lb:?}");
    }
    // least_conn uses weight-0 nodes when nothing else is available.
    let b = Balancer::new(&LbType::LeastConn, &zeros);
    assert_eq!(exhaust(&b, None, &all_healthy).len(), 2);
}

#[test]
fn single_node_shortcut() {
    for lb in [LbType::RoundRobin, LbType::Chash] {
        // Even with weight 0 and unhealthy, as APISIX skips the algorithm for one node.
        let b = Balancer::new(&lb, &[node("10.0.0.1", 80, 0, 0)]);
        let p = b.pick(None, &[], &|_| false).expect("the only node");
        assert_eq!(p.index, 0);
        assert!(b.pick(None, &[0], &all_healthy).is_none(), "{lb:?}");
    }
    let b = Balancer::new(&LbType::LeastConn, &[node("10.0.0.1", 80, 1, 0)]);
    let p = b.pick(None, &[], &all_healthy).expect("the only node");
    assert_eq!(b.in_flight(0), 1);
    drop(p);
    assert_eq!(b.in_flight(0), 0);
    assert!(b.pick(None, &[0], &all_healthy).is_none());
}

#[test]
fn zero_weight_never_chosen_by_rr_or_chash() {
    let nodes = [
        node("10.0.0.1", 80, 1, 0),
        node("10.0.0.2", 80, 0, 0),
        node("10.0.0.3", 80, 2, 0),
    ];
    for lb in [LbType::RoundRobin, LbType::Chash] {
        let b = Balancer::new(&lb, &nodes);
        for k in 0..300 {
            let key = format!("k{k}");
            let p = b
                .pick(Some(key.as_bytes()), &[], &all_healthy)
                .expect("a node");
            assert_ne!(p.index, 1, "{lb:?}");
        }
        assert_eq!(exhaust(&b, Some(b"k"), &all_healthy).len(), 2, "{lb:?}");
    }
}

#[test]
fn roundrobin_exact_ratio_through_balancer() {
    let b = Balancer::new(
        &LbType::RoundRobin,
        &[node("10.0.0.1", 80, 3, 0), node("10.0.0.2", 80, 1, 0)],
    );
    let mut c = [0usize; 2];
    for _ in 0..1000 {
        c[b.pick(None, &[], &all_healthy).expect("a node").index] += 1;
    }
    assert_eq!(c, [750, 250]);
}

#[test]
fn retries_never_repeat_and_exhaust() {
    let nodes: Vec<Node> = (1..=5)
        .map(|i| node(&format!("10.0.0.{i}"), 80, i, 0))
        .collect();
    for lb in [LbType::RoundRobin, LbType::Chash, LbType::LeastConn] {
        let b = Balancer::new(&lb, &nodes);
        for k in 0..50 {
            let key = format!("client-{k}");
            let got = exhaust(&b, Some(key.as_bytes()), &all_healthy);
            let uniq: HashSet<_> = got.iter().collect();
            assert_eq!((got.len(), uniq.len()), (5, 5), "{lb:?}");
        }
    }
}

#[test]
fn priority_fall_through_least_conn_exact_order() {
    let b = Balancer::new(&LbType::LeastConn, &priority_nodes());
    assert_eq!(
        exhaust(&b, None, &all_healthy),
        [
            "127.0.0.1:1995",
            "127.0.0.2:1995",
            "127.0.0.3:1995",
            "127.0.0.4:1995",
            "127.0.0.1:1996"
        ]
    );
}

#[test]
fn priority_fall_through_by_group() {
    let groups = |labels: &[String]| -> Vec<HashSet<String>> {
        vec![
            labels[..2].iter().cloned().collect(),
            labels[2..4].iter().cloned().collect(),
            labels[4..].iter().cloned().collect(),
        ]
    };
    let expected = groups(&[
        "127.0.0.1:1995".to_string(),
        "127.0.0.2:1995".to_string(),
        "127.0.0.3:1995".to_string(),
        "127.0.0.4:1995".to_string(),
        "127.0.0.1:1996".to_string(),
    ]);
    for lb in [LbType::RoundRobin, LbType::Chash] {
        for k in 0..20 {
            let b = Balancer::new(&lb, &priority_nodes());
            let key = format!("k{k}");
            let got = exhaust(&b, Some(key.as_bytes()), &all_healthy);
            assert_eq!(got.len(), 5);
            assert_eq!(groups(&got), expected, "{lb:?}");
        }
    }
    // Round robin inside a group follows SWRR: .1 (w2) twice as often as .2 (w1).
    let b = Balancer::new(&LbType::RoundRobin, &priority_nodes());
    let mut c = [0usize; 5];
    for _ in 0..300 {
        c[b.pick(None, &[], &all_healthy).expect("a node").index] += 1;
    }
    assert_eq!(c, [0, 200, 0, 100, 0]);
}

#[test]
fn unhealthy_nodes_skipped_and_all_unhealthy_uses_all() {
    let nodes = [
        node("10.0.0.1", 80, 1, 1),
        node("10.0.0.2", 80, 1, 0),
        node("10.0.0.3", 80, 1, 0),
    ];
    for lb in [LbType::RoundRobin, LbType::Chash, LbType::LeastConn] {
        let b = Balancer::new(&lb, &nodes);
        // The whole top group is down: the next group serves, node 2 never.
        let healthy = |i: usize| i == 1;
        for k in 0..50 {
            let key = format!("k{k}");
            let p = b.pick(Some(key.as_bytes()), &[], &healthy).expect("a node");
            assert_eq!(p.index, 1, "{lb:?}");
        }
        assert_eq!(exhaust(&b, Some(b"k"), &healthy), ["10.0.0.2:80"], "{lb:?}");
        // Nobody healthy: everyone is a candidate again, priority order kept.
        let got = exhaust(&b, Some(b"k"), &|_| false);
        assert_eq!(got.len(), 3, "{lb:?}");
        assert_eq!(got[0], "10.0.0.1:80", "{lb:?}");
    }
}

#[test]
fn chash_spec_vectors_through_balancer() {
    let b = Balancer::new(
        &LbType::Chash,
        &[node("0.0.0.0", 1995, 1, 0), node("127.0.0.1", 1995, 1, 0)],
    );
    let label = |key: &[u8]| {
        let p = b.pick(Some(key), &[], &all_healthy).expect("a node");
        b.backends()[p.index].label.clone()
    };
    assert_eq!(label(b"f"), "0.0.0.0:1995");
    assert_eq!(label(b"g"), "127.0.0.1:1995");
    assert_eq!(label(b"127.0.0.1"), "127.0.0.1:1995");
    // The same key always lands on the same node; None hashes like an empty key.
    for _ in 0..10 {
        assert_eq!(label(b"f"), "0.0.0.0:1995");
    }
    let none = b.pick(None, &[], &all_healthy).expect("a node").index;
    let empty = b.pick(Some(b""), &[], &all_healthy).expect("a node").index;
    assert_eq!(none, empty);
}

#[test]
fn least_conn_picks_least_loaded_and_releases_on_drop() {
    let b = Balancer::new(
        &LbType::LeastConn,
        &[node("10.0.0.1", 80, 2, 0), node("10.0.0.2", 80, 1, 0)],
    );
    let p1 = b.pick(None, &[], &all_healthy).expect("a node");
    assert_eq!(p1.index, 0); // idle: the higher weight first
    let p2 = b.pick(None, &[], &all_healthy).expect("a node");
    assert_eq!(p2.index, 0); // score 1.0 vs 1.0: higher weight again
    let p3 = b.pick(None, &[], &all_healthy).expect("a node");
    assert_eq!(p3.index, 1); // 1.5 vs 1.0
    assert_eq!((b.in_flight(0), b.in_flight(1)), (2, 1));
    drop(p1);
    drop(p2);
    assert_eq!((b.in_flight(0), b.in_flight(1)), (0, 1));
    let p4 = b.pick(None, &[], &all_healthy).expect("a node");
    assert_eq!(p4.index, 0);
    // A retry skips the tried node even when it is the least loaded.
    let p5 = b.pick(None, &[0], &all_healthy).expect("a node");
    assert_eq!(p5.index, 1);
    drop((p3, p4, p5));
    assert_eq!((b.in_flight(0), b.in_flight(1)), (0, 0));
    assert_eq!(b.in_flight(99), 0);
}

#[test]
fn least_conn_zero_weight_only_as_last_resort() {
    let b = Balancer::new(
        &LbType::LeastConn,
        &[node("10.0.0.1", 80, 0, 0), node("10.0.0.2", 80, 1, 0)],
    );
    let held: Vec<Pick> = (0..10)
        .map(|_| b.pick(None, &[], &all_healthy).expect("a node"))
        .collect();
    assert!(held.iter().all(|p| p.index == 1));
    assert_eq!(b.pick(None, &[1], &all_healthy).map(|p| p.index), Some(0));
}

#[test]
fn other_types_count_nothing() {
    let nodes = [node("10.0.0.1", 80, 1, 0), node("10.0.0.2", 80, 1, 0)];
    for lb in [LbType::RoundRobin, LbType::Chash] {
        let b = Balancer::new(&lb, &nodes);
        let _held = b.pick(Some(b"k"), &[], &all_healthy).expect("a node");
        assert_eq!((b.in_flight(0), b.in_flight(1)), (0, 0));
    }
}

#[test]
fn concurrent_picks_stay_consistent() {
    let rr = Arc::new(Balancer::new(
        &LbType::RoundRobin,
        &[node("10.0.0.1", 80, 3, 0), node("10.0.0.2", 80, 1, 0)],
    ));
    let lc = Arc::new(Balancer::new(
        &LbType::LeastConn,
        &[
            node("10.0.0.1", 80, 1, 0),
            node("10.0.0.2", 80, 1, 0),
            node("10.0.0.3", 80, 2, 0),
        ],
    ));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let rr = Arc::clone(&rr);
            let lc = Arc::clone(&lc);
            std::thread::spawn(move || {
                let mut c = [0usize; 2];
                for _ in 0..1000 {
                    c[rr.pick(None, &[], &all_healthy).expect("a node").index] += 1;
                    let held: Vec<Pick> = (0..3)
                        .map(|_| lc.pick(None, &[], &all_healthy).expect("a node"))
                        .collect();
                    assert!(lc.in_flight(0) + lc.in_flight(1) + lc.in_flight(2) >= 3);
                    drop(held);
                }
                c
            })
        })
        .collect();
    let mut total = [0usize; 2];
    for t in threads {
        let c = t.join().expect("thread");
        total[0] += c[0];
        total[1] += c[1];
    }
    // 4000 picks = 1000 whole cycles, whatever the interleaving.
    assert_eq!(total, [3000, 1000]);
    assert_eq!(
        (lc.in_flight(0), lc.in_flight(1), lc.in_flight(2)),
        (0, 0, 0)
    );
}

#[test]
fn balancer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Balancer>();
    check::<Pick>();
}
