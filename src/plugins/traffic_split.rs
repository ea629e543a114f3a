//! `traffic-split`: send a share of a route's sessions to other upstreams.
//!
//! The first rule whose `match` is absent, or one of whose `vars`
//! expressions holds, applies; its `weighted_upstreams` are chosen by smooth
//! weighted round robin. An entry with only a `weight` stands for the
//! route's own upstream; `upstream_id` entries are looked up in the
//! snapshot, inline `upstream` entries are compiled with it. A chosen
//! `upstream_id` that does not exist closes the session (503).

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::expr::Expr;
use super::{BuildCtx, Rejected, Target, Vars};

/// The fields of an inline upstream traffic-split uses (APISIX builds its
/// upstreams from these only).
const INLINE_FIELDS: [&str; 7] = [
    "name", "type", "hash_on", "key", "nodes", "timeout", "scheme",
];

/// Where a weighted entry sends a session.
#[derive(Debug)]
enum Dest {
    /// The route's own upstream.
    Route,
    /// Another upstream, or why it is unusable.
    Upstream(Result<Arc<Target>, String>),
}

#[derive(Debug)]
struct Rule {
    /// `None`: no `match`, always applies.
    matches: Option<Vec<Expr>>,
    weights: Vec<i64>,
    dests: Vec<Dest>,
    /// Smooth weighted round-robin state. A per-rule lock held for a few
    /// additions; taken only on routes with this plugin.
    current: Mutex<Vec<i64>>,
}

impl Rule {
    /// Smooth weighted round robin (nginx's): every entry gains its weight,
    /// the largest wins and pays back the total.
    fn pick(&self) -> Option<usize> {
        let total: i64 = self.weights.iter().sum();
        if total <= 0 {
            return None;
        }
        let mut cur = self.current.lock().ok()?;
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if *w <= 0 {
                continue;
            }
            cur[i] += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cur[b] -= total;
        Some(b)
    }
}

/// An entry's `weight` (default 1), saturated to `u32::MAX` so the sums of
/// the smooth round robin (at most 20 entries) cannot overflow.
fn weight(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_f64)
        .and_then(crate::model::duration::count_u32)
        .map_or(1, i64::from)
}

/// A compiled traffic-split conf.
#[derive(Debug)]
pub struct TrafficSplit {
    rules: Vec<Rule>,
}

fn target(
    up: Result<Arc<crate::snapshot::upstream::UpstreamRt>, String>,
    ctx: &BuildCtx<'_>,
) -> Dest {
    Dest::Upstream(up.map(|upstream| {
        let node_stats = upstream
            .balancer
            .backends()
            .iter()
            .map(|b| (ctx.node_stats)(&b.label))
            .collect();
        Arc::new(Target {
            upstream,
            node_stats,
        })
    }))
}

impl TrafficSplit {
    /// Compile a validated conf, resolving `upstream_id`s and compiling
    /// inline upstreams.
    pub fn build(conf: &Value, ctx: &BuildCtx<'_>) -> Result<TrafficSplit, String> {
        let mut rules = Vec::new();
        let empty = Vec::new();
        let conf_rules = conf
            .get("rules")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for (ri, rule) in conf_rules.iter().enumerate() {
            let matches = match rule.get("match").and_then(Value::as_array) {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .map(|m| match m.get("vars") {
                            Some(v) => Expr::compile(v).map_err(|e| {
                                format!("failed to validate the 'vars' expression: {e}")
                            }),
                            None => Ok(Expr::And(Vec::new())),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let default_entry = [serde_json::json!({"weight": 1})];
            let entries = match rule.get("weighted_upstreams").and_then(Value::as_array) {
                Some(a) if !a.is_empty() => a.as_slice(),
                _ => &default_entry[..],
            };
            let mut weights = Vec::new();
            let mut dests = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                weights.push(weight(e.get("weight")));
                let dest = match (e.get("upstream_id"), e.get("upstream")) {
                    (Some(id), _) => {
                        let id = match id {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        target(
                            ctx.upstreams
                                .get(&id)
                                .cloned()
                                .ok_or_else(|| format!("upstream [{id}] not found")),
                            ctx,
                        )
                    }
                    (None, Some(inline)) => {
                        let picked: Map<String, Value> = inline
                            .as_object()
                            .into_iter()
                            .flatten()
                            .filter(|(k, _)| INLINE_FIELDS.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let origin =
                            format!("stream_routes/{}/traffic-split/{ri}/{i}", ctx.route_id);
                        target((ctx.compile)(origin, &Value::Object(picked)), ctx)
                    }
                    (None, None) => Dest::Route,
                };
                dests.push(dest);
            }
            rules.push(Rule {
                matches,
                current: Mutex::new(vec![0; weights.len()]),
                weights,
                dests,
            });
        }
        Ok(TrafficSplit { rules })
    }

    /// Preread: the upstream this session takes (`None`: the route's own).
    pub fn choose(&self, vars: &Vars<'_>) -> Result<Option<Arc<Target>>, Rejected> {
        let var = |name: &str| vars.get(name);
        let Some(rule) = self.rules.iter().find(|r| match &r.matches {
            None => true,
            Some(m) => m.iter().any(|e| e.eval(&var)),
        }) else {
            return Ok(None);
        };
        let Some(i) = rule.pick() else {
            return Ok(None);
        };
        match &rule.dests[i] {
            Dest::Route => Ok(None),
            Dest::Upstream(Ok(t)) => Ok(Some(Arc::clone(t))),
            Dest::Upstream(Err(why)) => Err(Rejected::new("traffic-split", 503, why.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(weights: &[i64]) -> Rule {
        Rule {
            matches: None,
            weights: weights.to_vec(),
            dests: weights.iter().map(|_| Dest::Route).collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }

    #[test]
    fn smooth_weighted_round_robin() {
        let r = rule(&[9, 1]);
        let picks: Vec<usize> = (0..10).filter_map(|_| r.pick()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 9);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
        let r = rule(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).filter_map(|_| r.pick()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "spread, not bunched");
        let r = rule(&[0, 3]);
        assert!((0..6).all(|_| r.pick() == Some(1)));
        assert_eq!(rule(&[0, 0]).pick(), None);
    }
}
