//! `limit-conn`: at most `conn` concurrent sessions per key, `burst` more
//! delayed, the rest closed (status 503).
//!
//! A session counts n = current + 1 when it starts: n > conn + burst is
//! rejected (and not counted), n > conn waits `default_conn_delay ×
//! floor((n − 1) / conn)` before going on, anything else goes on at once.
//! The count drops when the session ends ([`Guard`]'s `Drop`).
//!
//! Keys are `<route key>:<conf version>:<value>`, so a route update starts
//! with fresh counters. `only_use_default_delay` is accepted; for stream
//! sessions APISIX never feeds latencies back, so the delay always uses
//! `default_conn_delay`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{Rejected, Vars};
use crate::model::duration;

const SHARDS: usize = 16;

/// The concurrent-session counters of every limit-conn key in the process.
///
/// Shared by all data-plane worker threads (one table, as APISIX's shared
/// dict is shared by its workers). Sharded mutexes: a session start or end
/// locks one small shard for a map update, never across an await.
#[derive(Debug)]
pub struct Counters {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Counters {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, u64>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[i]
    }

    /// Count one more session on `key` unless that makes more than `max`;
    /// returns the new count, or `None` when rejected (nothing counted).
    fn incoming(&self, key: &str, max: u64) -> Option<u64> {
        let mut m = self.shard(key).lock().ok()?;
        let n = m.get(key).copied().unwrap_or(0) + 1;
        if n > max {
            return None;
        }
        m.insert(key.to_string(), n);
        Some(n)
    }

    fn leaving(&self, key: &str) {
        if let Ok(mut m) = self.shard(key).lock() {
            if let Some(n) = m.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(key);
                }
            }
        }
    }

    /// Sessions counted on `key` now.
    pub fn get(&self, key: &str) -> u64 {
        self.shard(key)
            .lock()
            .map_or(0, |m| m.get(key).copied().unwrap_or(0))
    }

    /// Sessions counted over every key now (0 when idle).
    pub fn in_use(&self) -> u64 {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|m| m.values().sum::<u64>())
            .sum()
    }
}

/// A counted session; dropping it ends the count.
#[derive(Debug)]
pub struct Guard {
    table: Arc<Counters>,
    key: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.table.leaving(&self.key);
    }
}

/// What a session with count `n` must do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Go on now.
    Go,
    /// Go on after this delay.
    Delay(Duration),
    /// Close (503).
    Reject,
}

/// The limit-conn rule for the n-th concurrent session.
pub fn decide(n: u64, conn: u64, burst: u64, unit: Duration) -> Decision {
    if n > conn.saturating_add(burst) {
        Decision::Reject
    } else if n > conn {
        let steps = (n - 1) / conn.max(1);
        Decision::Delay(unit.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX)))
    } else {
        Decision::Go
    }
}

/// How the key value is found.
#[derive(Debug)]
enum Key {
    /// A variable name (`key_type: var`).
    Var(String),
    /// A `$var` template (`key_type: var_combination`).
    Combination(String),
}

/// A compiled limit-conn conf.
#[derive(Debug)]
pub struct LimitConn {
    conn: u64,
    burst: u64,
    delay: Duration,
    key: Key,
    prefix: String,
    table: Arc<Counters>,
}

impl LimitConn {
    /// Compile a validated conf; `prefix` is `<route key>:<conf version>`.
    pub fn build(conf: &Value, prefix: String, table: Arc<Counters>) -> Result<LimitConn, String> {
        let int = |k: &str| {
            conf.get(k)
                .and_then(Value::as_f64)
                .and_then(duration::count_u64)
        };
        let conn = int("conn")
            .filter(|c| *c > 0)
            .ok_or("limit-conn: bad conn")?;
        let burst = int("burst").ok_or("limit-conn: bad burst")?;
        let delay = conf
            .get("default_conn_delay")
            .and_then(Value::as_f64)
            .and_then(duration::secs)
            .ok_or("limit-conn: bad default_conn_delay")?;
        let name = conf
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("remote_addr")
            .to_string();
        let key = match conf.get("key_type").and_then(Value::as_str) {
            Some("var_combination") => Key::Combination(name),
            _ => Key::Var(name),
        };
        Ok(LimitConn {
            conn,
            burst,
            delay,
            key,
            prefix,
            table,
        })
    }

    /// The counter key of a session.
    pub fn key_for(&self, vars: &Vars<'_>) -> String {
        let value = match &self.key {
            Key::Var(name) => vars.get(name),
            Key::Combination(t) => match vars.expand(t) {
                (_, 0) => None,
                (v, _) => Some(v),
            },
        };
        let value = match value.filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => {
                tracing::debug!("The value of the configured key is empty, use client IP instead");
                vars.get("remote_addr").unwrap_or_default()
            }
        };
        format!("{}:{value}", self.prefix)
    }

    /// Count a starting session: its guard and the delay before it goes
    /// on, or a 503 rejection.
    pub fn enter(&self, vars: &Vars<'_>) -> Result<(Guard, Duration), Rejected> {
        let key = self.key_for(vars);
        tracing::debug!(limit_key = %key, "limit-conn");
        let Some(n) = self
            .table
            .incoming(&key, self.conn.saturating_add(self.burst))
        else {
            return Err(Rejected::new(
                "limit-conn",
                503,
                format!("over {} + {} concurrent sessions", self.conn, self.burst),
            ));
        };
        let guard = Guard {
            table: Arc::clone(&self.table),
            key,
        };
        let delay = match decide(n, self.conn, self.burst, self.delay) {
            Decision::Delay(d) => d,
            _ => Duration::ZERO,
        };
        Ok((guard, delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: Duration = Duration::from_millis(200);

    #[test]
    fn conn_2_burst_1_serves_three() {
        let d: Vec<Decision> = (1..=5).map(|n| decide(n, 2, 1, UNIT)).collect();
        assert_eq!(
            d,
            vec![
                Decision::Go,
                Decision::Go,
                Decision::Delay(UNIT),
                Decision::Reject,
                Decision::Reject
            ]
        );
    }

    #[test]
    fn delay_grows_per_conn_step() {
        assert_eq!(decide(5, 2, 10, UNIT), Decision::Delay(UNIT * 2));
        assert_eq!(decide(6, 2, 10, UNIT), Decision::Delay(UNIT * 2));
        assert_eq!(decide(7, 2, 10, UNIT), Decision::Delay(UNIT * 3));
        assert_eq!(decide(100, 100, 50, UNIT), Decision::Go);
        assert_eq!(decide(101, 100, 50, UNIT), Decision::Delay(UNIT));
    }

    #[test]
    fn counters_reject_without_counting_and_release_on_drop() {
        let t = Arc::new(Counters::default());
        let l = LimitConn::build(
            &serde_json::json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}),
            "/apisix/stream_routes/1:7".into(),
            t.clone(),
        )
        .unwrap();
        let mut guards = Vec::new();
        assert!(t.incoming("k", 2).is_some());
        assert!(t.incoming("k", 2).is_some());
        assert!(t.incoming("k", 2).is_none());
        assert_eq!(t.get("k"), 2);
        t.leaving("k");
        t.leaving("k");
        assert_eq!(t.in_use(), 0);
        guards.push(Guard {
            table: t.clone(),
            key: "x".into(),
        });
        t.incoming("x", 5);
        drop(guards);
        assert_eq!(t.in_use(), 0);
        assert_eq!(l.conn, 1);
    }
}
