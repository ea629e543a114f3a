//! `roundrobin` inside one priority group: smooth weighted round robin (nginx's algorithm).
//!
//! Each step adds every node's weight to its current weight, picks the node with the highest
//! current weight and subtracts the total from it. Picks are spread evenly (A=5, B=1, C=1 ⇒
//! A A B A C A A) where APISIX's interleaved variant sends bursts (A five times in a row); over
//! each cycle the counts match the weights exactly. Weight-0 nodes are never picked.
//!
//! Why a precomputed cycle: the sequence repeats every `sum(weights) / gcd` picks, so for
//! usual weights it fits in a small table that all connections walk with one atomic cursor —
//! no lock on the hot path. The cursor starts at a random offset so that every rebuild (and
//! every process) does not send its first connections to the same node. Cycles longer than
//! [`MAX_CYCLE`] keep the running state behind a mutex instead (a few additions per pick).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{weight_gcd, Backend};

/// Longest cycle kept as a table.
const MAX_CYCLE: u64 = 4096;

/// Round-robin state for one priority group.
#[derive(Debug)]
pub(super) enum RoundRobin {
    /// No node with a weight above 0.
    Empty,
    /// One full cycle of picks, walked by an atomic cursor.
    Cycle {
        seq: Vec<usize>,
        cursor: AtomicUsize,
    },
    /// Running state for cycles longer than [`MAX_CYCLE`].
    Stateful(Mutex<Swrr>),
}

/// The running state of smooth weighted round robin.
#[derive(Debug)]
pub(super) struct Swrr {
    /// (node index, weight) of the nodes with a weight above 0.
    nodes: Vec<(usize, i64)>,
    /// Current weight per entry of `nodes`.
    current: Vec<i64>,
}

impl Swrr {
    /// One step over the eligible nodes (others neither gain nor lose, as nginx skips tried or
    /// down peers); None when no node is eligible.
    fn step(&mut self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (pos, &(index, weight)) in self.nodes.iter().enumerate() {
            if !eligible(index) {
                continue;
            }
            self.current[pos] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[pos] > self.current[b]) {
                best = Some(pos);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(self.nodes[best].0)
    }
}

impl RoundRobin {
    /// Builds the state for the nodes `members` (indexes into `backends`).
    pub(super) fn new(members: &[usize], backends: &[Backend]) -> RoundRobin {
        let g = weight_gcd(members, backends);
        let nodes: Vec<(usize, i64)> = members
            .iter()
            .filter_map(|&i| backends.get(i).map(|b| (i, b.weight)))
            .filter(|&(_, w)| w > 0)
            .map(|(i, w)| (i, i64::from(w) / g as i64))
            .collect();
        if nodes.is_empty() {
            return RoundRobin::Empty;
        }
        let total: u64 = nodes.iter().map(|&(_, w)| w as u64).sum();
        let mut swrr = Swrr {
            current: vec![0; nodes.len()],
            nodes,
        };
        let all = |_: usize| true;
        if total <= MAX_CYCLE {
            let seq: Vec<usize> = (0..total).filter_map(|_| swrr.step(&all)).collect();
            let start = rand::random_range(0..seq.len());
            RoundRobin::Cycle {
                seq,
                cursor: AtomicUsize::new(start),
            }
        } else {
            // Random start: advance a random number of steps (bounded to keep builds cheap).
            for _ in 0..rand::random_range(0..MAX_CYCLE) {
                swrr.step(&all);
            }
            RoundRobin::Stateful(Mutex::new(swrr))
        }
    }

    /// The next node for which `eligible` holds; walks forward past tried or unhealthy nodes.
    pub(super) fn pick(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self {
            RoundRobin::Empty => None,
            RoundRobin::Cycle { seq, cursor } => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..seq.len())
                    .map(|k| seq[start.wrapping_add(k) % seq.len()])
                    .find(|&i| eligible(i))
            }
            RoundRobin::Stateful(state) => state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .step(eligible),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    fn backends(weights: &[u32]) -> (Vec<usize>, Vec<Backend>) {
        let b: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Backend::from_node(&Node {
                    host: format!("10.0.0.{i}"),
                    port: 80,
                    weight: w,
                    priority: 0,
                })
            })
            .collect();
        ((0..b.len()).collect(), b)
    }

    fn counts(rr: &RoundRobin, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..picks {
            c[rr.pick(&|_| true).expect("a node")] += 1;
        }
        c
    }

    #[test]
    fn exact_ratio_three_to_one() {
        let (m, b) = backends(&[3, 1]);
        let rr = RoundRobin::new(&m, &b);
        assert_eq!(counts(&rr, 2, 1000), vec![750, 250]);
    }

    #[test]
    fn smooth_sequence_shape() {
        let (m, b) = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&m, &b);
        let RoundRobin::Cycle { seq, .. } = &rr else {
            panic!("expected a cycle table");
        };
        assert_eq!(seq, &vec![0, 0, 1, 0, 2, 0, 0]);
        // Whatever the random start, 7 consecutive picks are a rotation of the cycle.
        let got: Vec<usize> = (0..7)
            .map(|_| rr.pick(&|_| true).expect("a node"))
            .collect();
        let doubled: Vec<usize> = seq.iter().chain(seq.iter()).copied().collect();
        assert!(doubled.windows(7).any(|w| w == got.as_slice()), "{got:?}");
        // B and C are spread inside the cycle; the longest run of A (across the cycle
        // boundary: A A | A A) is 4, never the 5 of the interleaved variant.
        assert!(!doubled.windows(5).any(|w| w == [0; 5]));
    }

    #[test]
    fn weights_reduced_by_gcd() {
        let (m, b) = backends(&[300, 100]);
        let RoundRobin::Cycle { seq, .. } = RoundRobin::new(&m, &b) else {
            panic!("expected a cycle table");
        };
        assert_eq!(seq.len(), 4);
    }

    #[test]
    fn random_start_varies_but_ratio_holds() {
        let (m, b) = backends(&[1, 1, 1, 1, 1, 1, 1, 1]);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let rr = RoundRobin::new(&m, &b);
            firsts.insert(rr.pick(&|_| true));
            assert_eq!(counts(&rr, 8, 800), vec![100; 8]);
        }
        assert!(firsts.len() > 1, "first pick never changed: {firsts:?}");
    }

    #[test]
    fn zero_weight_never_picked() {
        let (m, b) = backends(&[0, 2, 0, 1]);
        let rr = RoundRobin::new(&m, &b);
        assert_eq!(counts(&rr, 4, 300), vec![0, 200, 0, 100]);
        let (m, b) = backends(&[0, 0]);
        assert!(RoundRobin::new(&m, &b).pick(&|_| true).is_none());
    }

    #[test]
    fn long_cycle_uses_running_state_with_exact_ratio() {
        let (m, b) = backends(&[3000, 2000, 1]);
        let rr = RoundRobin::new(&m, &b);
        assert!(matches!(rr, RoundRobin::Stateful(_)));
        assert_eq!(counts(&rr, 3, 5001), vec![3000, 2000, 1]);
        // Ineligible nodes are skipped.
        for _ in 0..100 {
            assert_eq!(rr.pick(&|i| i == 1), Some(1));
        }
        assert_eq!(rr.pick(&|_| false), None);
    }

    #[test]
    fn walks_past_ineligible_nodes() {
        let (m, b) = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&m, &b);
        for _ in 0..20 {
            let i = rr.pick(&|i| i != 0).expect("a node");
            assert_ne!(i, 0);
        }
        assert_eq!(rr.pick(&|i| i == 2), Some(2));
        assert_eq!(rr.pick(&|_| false), None);
    }
}
