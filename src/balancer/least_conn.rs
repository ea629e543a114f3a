//! `least_conn` inside one priority group: the node with the lowest
//! `(1 + in-flight sessions) / weight` wins.
//!
//! Ties go to the higher weight, then to the earlier node (APISIX tries weight 2 before weight 1
//! when both are idle). A weight-0 node has an infinite score: it is chosen only when no other
//! node of its group is available. The counters are atomics owned by the `Balancer`, so picks
//! never lock; the caller increments the winner and a guard decrements it when dropped.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Backend;

/// Compares two `(in_flight, weight)` scores: `(1 + a.0) / a.1` against `(1 + b.0) / b.1`,
/// with weight 0 as infinity, then ties by higher weight.
fn compare(a: (usize, u32), b: (usize, u32)) -> CmpOrdering {
    let by_score = match (a.1, b.1) {
        (0, 0) => CmpOrdering::Equal,
        (0, _) => CmpOrdering::Greater,
        (_, 0) => CmpOrdering::Less,
        (wa, wb) => {
            // Cross-multiplied to stay exact: (1 + ia) * wb vs (1 + ib) * wa.
            let lhs = (a.0 as u128 + 1) * u128::from(wb);
            let rhs = (b.0 as u128 + 1) * u128::from(wa);
            lhs.cmp(&rhs)
        }
    };
    by_score.then(b.1.cmp(&a.1))
}

/// The least loaded eligible node of `members`; earlier members win full ties.
pub(super) fn pick(
    members: &[usize],
    backends: &[Backend],
    in_flight: &[AtomicUsize],
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, (usize, u32))> = None;
    for &i in members {
        if !eligible(i) {
            continue;
        }
        let (Some(b), Some(c)) = (backends.get(i), in_flight.get(i)) else {
            continue;
        };
        let score = (c.load(Ordering::Relaxed), b.weight);
        if best.is_none_or(|(_, s)| compare(score, s) == CmpOrdering::Less) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_order() {
        // 1 in flight at weight 2 (score 1) beats 1 in flight at weight 1 (score 2).
        assert_eq!(compare((1, 2), (1, 1)), CmpOrdering::Less);
        // Equal scores: the higher weight first.
        assert_eq!(compare((1, 2), (0, 1)), CmpOrdering::Less);
        assert_eq!(compare((0, 1), (1, 2)), CmpOrdering::Greater);
        // Weight 0 loses against any loaded node.
        assert_eq!(compare((0, 0), (1000, 1)), CmpOrdering::Greater);
        assert_eq!(compare((3, 0), (0, 0)), CmpOrdering::Equal);
    }
}
