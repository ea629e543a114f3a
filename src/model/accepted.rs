//! Property: every stream route and upstream the Admin API validation accepts
//! compiles into a snapshot, without a panic and without being left out.
//! Bodies come from a small seeded generator biased towards the numbers that
//! overflow conversions (huge timeouts, weights, counts, intervals).

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{validate, EnabledPlugins, Kind, NotEnabled};
use crate::health::registry::Registry;
use crate::snapshot::{Carry, Snapshot};
use crate::store::{Dump, Entry};

/// xorshift64*: deterministic, no dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn chance(&mut self) -> bool {
        self.next().is_multiple_of(2)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// A number, often one at or past a conversion limit.
    fn number(&mut self) -> Value {
        match self.below(20) {
            0 => json!(0),
            1 => json!(1),
            2 => json!(-1),
            3 => json!(0.5),
            4 => json!(1e-300),
            5 => json!(1e20),
            6 => json!(1e300),
            7 => json!(f64::MAX),
            8 => json!(4_294_967_295_u64),
            9 => json!(4_294_967_296_u64),
            10 => json!(9_007_199_254_740_993_u64),
            11 => json!(u64::MAX),
            12 => json!(i64::MIN),
            13 => json!(65535),
            14 => json!(65536),
            15 => json!(2_147_483_648_u64),
            16 => json!(254),
            17 => json!(31_536_001),
            _ => json!(self.below(10) + 1),
        }
    }

    fn maybe(&mut self, obj: &mut Map<String, Value>, key: &str, v: Value) {
        if self.chance() {
            obj.insert(key.to_string(), v);
        }
    }

    fn nodes(&mut self) -> Value {
        let count = self.below(3) + 1;
        if self.chance() {
            let mut map = Map::new();
            for i in 0..count {
                let host = self.pick(&["127.0.0.1", "[::1]", "localhost", "10.0.0.1"]);
                let addr = match self.below(4) {
                    0 => host.to_string(),
                    1 => format!("{host}:{}", self.number()),
                    _ => format!("{host}:{}", 2000 + i),
                };
                map.insert(addr, self.number());
            }
            Value::Object(map)
        } else {
            let list = (0..count)
                .map(|i| {
                    let mut n = Map::new();
                    n.insert("host".into(), json!(self.pick(&["127.0.0.1", "a.test"])));
                    n.insert("port".into(), json!(2000 + i));
                    n.insert("weight".into(), self.number());
                    let v = self.number();
                    self.maybe(&mut n, "priority", v);
                    Value::Object(n)
                })
                .collect();
            Value::Array(list)
        }
    }

    fn checks(&mut self) -> Value {
        let mut active = Map::new();
        active.insert("type".into(), json!(self.pick(&["tcp", "http"])));
        let v = self.number();
        self.maybe(&mut active, "timeout", v);
        let v = self.number();
        self.maybe(&mut active, "concurrency", v);
        let healthy = json!({"interval": self.number(), "successes": self.number()});
        let unhealthy = json!({
            "interval": self.number(),
            "tcp_failures": self.number(),
            "timeouts": self.number(),
        });
        self.maybe(&mut active, "healthy", healthy);
        self.maybe(&mut active, "unhealthy", unhealthy);
        let mut checks = Map::new();
        checks.insert("active".into(), Value::Object(active));
        if self.chance() {
            checks.insert(
                "passive".into(),
                json!({"type": "tcp", "unhealthy": {"tcp_failures": self.number(), "timeouts": self.number()}}),
            );
        }
        Value::Object(checks)
    }

    fn upstream(&mut self) -> Value {
        let mut up = Map::new();
        up.insert("nodes".into(), self.nodes());
        let lb = self.pick(&["roundrobin", "chash", "least_conn"]);
        up.insert("type".into(), json!(lb));
        if lb == "chash" {
            up.insert("key".into(), json!("remote_addr"));
        }
        let v = self.number();
        self.maybe(&mut up, "retries", v);
        let v = self.number();
        self.maybe(&mut up, "retry_timeout", v);
        let timeout =
            json!({"connect": self.number(), "send": self.number(), "read": self.number()});
        self.maybe(&mut up, "timeout", timeout);
        let checks = self.checks();
        self.maybe(&mut up, "checks", checks);
        Value::Object(up)
    }

    fn route(&mut self) -> Value {
        let mut r = Map::new();
        let v = self.number();
        self.maybe(&mut r, "server_port", v);
        self.maybe(&mut r, "remote_addr", json!("127.0.0.1"));
        if self.chance() {
            r.insert("upstream_id".into(), json!("u1"));
        } else {
            r.insert("upstream".into(), self.upstream());
        }
        let mut plugins = Map::new();
        let limit = json!({
            "conn": self.number(),
            "burst": self.number(),
            "default_conn_delay": self.number(),
            "key": "remote_addr",
        });
        self.maybe(&mut plugins, "limit-conn", limit);
        if self.chance() {
            let split = json!({"rules": [{"weighted_upstreams": [
                {"upstream": self.upstream(), "weight": self.number()},
                {"weight": self.number()},
            ]}]});
            plugins.insert("traffic-split".into(), split);
        }
        if !plugins.is_empty() {
            r.insert("plugins".into(), Value::Object(plugins));
        }
        Value::Object(r)
    }
}

fn entry(kind: Kind, id: &str, v: Value) -> Entry {
    Entry {
        kind,
        id: id.into(),
        value: Arc::new(v),
        create_rev: 1,
        mod_rev: 1,
    }
}

#[test]
fn whatever_validation_accepts_compiles() {
    let enabled = EnabledPlugins::new(["limit-conn", "traffic-split"]);
    let carry = Carry::new(Registry::new(
        true,
        TaskTracker::new(),
        CancellationToken::new(),
    ));
    let fallback_upstream = json!({"nodes": {"127.0.0.1:1995": 1}});
    let mut gen = Gen(0x5EED_1234_ABCD_0001);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..1500 {
        let route = gen.route();
        let upstream = gen.upstream();
        let route_ok = validate(Kind::StreamRoute, &route, &enabled, NotEnabled::Refuse).is_ok();
        let upstream_ok = validate(Kind::Upstream, &upstream, &enabled, NotEnabled::Refuse).is_ok();
        for ok in [route_ok, upstream_ok] {
            if ok {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        if !route_ok && !upstream_ok {
            continue;
        }
        let up = if upstream_ok {
            &upstream
        } else {
            &fallback_upstream
        };
        let mut entries = vec![entry(Kind::Upstream, "u1", up.clone())];
        if route_ok {
            entries.push(entry(Kind::StreamRoute, "r1", route.clone()));
        }
        let dump = Dump {
            revision: round + 1,
            entries,
        };
        let snap = Snapshot::build(&dump, None, &carry);
        assert_eq!(
            snap.rejected(Kind::Upstream, "u1"),
            None,
            "accepted upstream left out: {up}"
        );
        if route_ok {
            assert_eq!(
                snap.rejected(Kind::StreamRoute, "r1"),
                None,
                "accepted route left out: {route}"
            );
            assert_eq!(snap.route_count(), 1, "accepted route not served: {route}");
        }
    }
    // The generator exercises both sides of validation.
    assert!(
        accepted > 200 && refused > 200,
        "{accepted} accepted, {refused} refused"
    );
}
