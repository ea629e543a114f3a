//! `chash` inside one priority group: APISIX's consistent-hash ring, point for point.
//!
//! Weights are divided by their gcd; a node's id is `"host:port"` with every `:` replaced by a
//! NUL byte; a node of weight `w` gets `w × 160` points, chained as
//! `p_1 = CRC32(id ‖ LE32(0))`, `p_k = CRC32(id ‖ LE32(p_{k−1}))`. Points are sorted and a key
//! goes to the first point whose hash is ≥ `CRC32(key)`, wrapping to the first point. Matching
//! the ring exactly keeps keys on the same node as an APISIX gateway (and across migrations).
//!
//! The ring is immutable once built, so lookups need no synchronisation. It holds every node
//! with a weight above 0, healthy or not: an unhealthy or tried node is passed over by walking
//! to the next points, so one node going down never moves keys of the other nodes.
//!
//! A ring never holds more than [`MAX_POINTS`] points: when the reduced weights would need
//! more (weights such as 1,000,000 and 1), each node gets its share of that many points (at
//! least one), so a weight can never make a build take minutes or gigabytes. Rings within
//! the limit are APISIX's exactly.

use super::{weight_gcd, Backend};

/// Points per unit of (gcd-reduced) weight.
const POINTS_PER_WEIGHT: u64 = 160;

/// The most points a ring is built with (4 MiB of points).
pub(super) const MAX_POINTS: u64 = 1 << 18;

/// The hash ring of one priority group.
#[derive(Debug)]
pub(super) struct Ring {
    /// (point hash, node index), sorted by hash.
    points: Vec<(u32, usize)>,
}

/// The ring id of a node: `host:port` with every `:` (IPv6 ones too) replaced by NUL.
fn node_id(b: &Backend) -> Vec<u8> {
    format!("{}:{}", b.host, b.port)
        .bytes()
        .map(|c| if c == b':' { 0 } else { c })
        .collect()
}

impl Ring {
    /// Builds the ring for the nodes `members` (indexes into `backends`).
    pub(super) fn new(members: &[usize], backends: &[Backend]) -> Ring {
        let g = weight_gcd(members, backends);
        let units = |b: &Backend| u64::from(b.weight) / g;
        let total: u64 = members
            .iter()
            .filter_map(|&i| backends.get(i))
            .map(units)
            .fold(0, u64::saturating_add)
            .saturating_mul(POINTS_PER_WEIGHT);
        let mut points = Vec::new();
        for &index in members {
            let Some(b) = backends.get(index) else {
                continue;
            };
            let count = if total <= MAX_POINTS {
                units(b) * POINTS_PER_WEIGHT
            } else if units(b) == 0 {
                0
            } else {
                // units * 160 <= total, so the share is at most MAX_POINTS.
                let share = u128::from(units(b) * POINTS_PER_WEIGHT) * u128::from(MAX_POINTS)
                    / u128::from(total);
                u64::try_from(share).unwrap_or(MAX_POINTS).max(1)
            };
            let id = node_id(b);
            let mut prev = 0u32;
            for _ in 0..count {
                let mut h = crc32fast::Hasher::new();
                h.update(&id);
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                points.push((prev, index));
            }
        }
        // Stable: equal hashes keep node configuration order.
        points.sort_by_key(|&(hash, _)| hash);
        Ring { points }
    }

    /// The node owning `hash`, or the next eligible one along the ring.
    pub(super) fn pick(&self, hash: u32, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|&(h, _)| h < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    fn backends(nodes: &[(&str, u16, u32)]) -> (Vec<usize>, Vec<Backend>) {
        let b: Vec<Backend> = nodes
            .iter()
            .map(|&(host, port, weight)| {
                Backend::from_node(&Node {
                    host: host.to_string(),
                    port,
                    weight,
                    priority: 0,
                })
            })
            .collect();
        ((0..b.len()).collect(), b)
    }

    fn lookup(ring: &Ring, key: &[u8]) -> Option<usize> {
        ring.pick(crc32fast::hash(key), &|_| true)
    }

    #[test]
    fn spec_check_values() {
        let (m, b) = backends(&[("0.0.0.0", 1995, 1), ("127.0.0.1", 1995, 1)]);
        let ring = Ring::new(&m, &b);
        assert_eq!(ring.points.len(), 320);
        assert_eq!(lookup(&ring, b"f"), Some(0));
        assert_eq!(lookup(&ring, b"g"), Some(1));
        assert_eq!(lookup(&ring, b"127.0.0.1"), Some(1));
    }

    #[test]
    fn node_id_replaces_every_colon() {
        let (_, b) = backends(&[("::1", 80, 1)]);
        assert_eq!(node_id(&b[0]), b"\x00\x001\x0080".to_vec());
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let nodes = [
            ("10.0.0.1", 80, 1),
            ("10.0.0.2", 80, 1),
            ("10.0.0.3", 80, 1),
            ("10.0.0.4", 80, 1),
        ];
        let (m, b) = backends(&nodes);
        let full = Ring::new(&m, &b);
        let (m3, b3) = backends(&[nodes[0], nodes[1], nodes[3]]);
        let reduced = Ring::new(&m3, &b3);
        let mut moved = 0;
        for k in 0..1000 {
            let key = format!("client-{k}");
            let before = &b[lookup(&full, key.as_bytes()).expect("a node")].label;
            let after = &b3[lookup(&reduced, key.as_bytes()).expect("a node")].label;
            if before == "10.0.0.3:80" {
                moved += 1;
            } else {
                assert_eq!(before, after, "key {key} moved");
            }
        }
        assert!(moved > 100, "removed node owned only {moved} keys");
    }

    #[test]
    fn huge_weights_are_bounded() {
        let (m, b) = backends(&[
            ("10.0.0.1", 80, u32::MAX),
            ("10.0.0.2", 80, 1),
            ("10.0.0.3", 80, u32::MAX - 1),
        ]);
        let ring = Ring::new(&m, &b);
        assert!(ring.points.len() as u64 <= MAX_POINTS + 3);
        assert!(ring.points.iter().any(|&(_, i)| i == 1));
    }

    #[test]
    fn weights_roughly_proportional() {
        let (m, b) = backends(&[("10.0.0.1", 80, 1), ("10.0.0.2", 80, 3)]);
        let ring = Ring::new(&m, &b);
        assert_eq!(ring.points.len(), 640);
        let mut c = [0usize; 2];
        for k in 0..10_000 {
            c[lookup(&ring, format!("key-{k}").as_bytes()).expect("a node")] += 1;
        }
        let share = c[1] as f64 / 10_000.0;
        assert!((0.65..0.85).contains(&share), "{c:?}");
    }

    #[test]
    fn gcd_reduction_and_zero_weight() {
        let (m, b) = backends(&[
            ("10.0.0.1", 80, 10),
            ("10.0.0.2", 80, 20),
            ("10.0.0.3", 80, 0),
        ]);
        let ring = Ring::new(&m, &b);
        assert_eq!(ring.points.len(), 480);
        assert!(ring.points.iter().all(|&(_, i)| i != 2));
        let (m, b) = backends(&[("10.0.0.1", 80, 0)]);
        assert_eq!(lookup(&Ring::new(&m, &b), b"x"), None);
    }

    #[test]
    fn walk_skips_ineligible_nodes() {
        let (m, b) = backends(&[
            ("10.0.0.1", 80, 1),
            ("10.0.0.2", 80, 1),
            ("10.0.0.3", 80, 1),
        ]);
        let ring = Ring::new(&m, &b);
        for k in 0..100 {
            let h = crc32fast::hash(format!("k{k}").as_bytes());
            let first = ring.pick(h, &|_| true).expect("a node");
            let second = ring.pick(h, &|i| i != first).expect("a node");
            assert_ne!(first, second);
            let third = ring
                .pick(h, &|i| i != first && i != second)
                .expect("a node");
            assert_eq!(first + second + third, 3);
            assert_eq!(ring.pick(h, &|_| false), None);
        }
    }
}
