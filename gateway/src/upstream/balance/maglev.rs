//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as in
//! Envoy: a lookup table of prime size filled by each endpoint's own
//! permutation of the slots, in turns proportional to its weight.

use super::{fmix64, fnv1a};

/// The table size for up to 655 endpoints (Envoy's default too); beyond
/// that, the first prime ≥ 100 × endpoints, which keeps each endpoint's
/// share within about 1% of its weight.
pub(super) const DEFAULT_TABLE_SIZE: usize = 65_537;

const EMPTY: u32 = u32::MAX;

pub(super) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// `ids` and `weights` have one entry per endpoint; weights are ≥ 1.
    /// The permutations come from the ids alone, so an endpoint keeps its
    /// preferred slots whatever its index or the other endpoints are.
    pub(super) fn new(ids: &[String], weights: &[u64]) -> Maglev {
        let n = ids.len();
        if n == 0 {
            return Maglev {
                table: Box::new([]),
            };
        }
        let m = table_size(n);
        let m64 = m as u64;
        let mut position: Vec<u64> = Vec::with_capacity(n);
        let mut skip: Vec<u64> = Vec::with_capacity(n);
        for id in ids {
            position.push(fmix64(fnv1a(0xcbf2_9ce4_8422_2325, id.as_bytes())) % m64);
            skip.push(fmix64(fnv1a(0x6c62_272e_07bb_0142, id.as_bytes())) % (m64 - 1) + 1);
        }
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        let mut table = vec![EMPTY; m];
        let mut count = vec![0u64; n];
        let mut filled = 0;
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for i in 0..n {
                // An endpoint of the largest weight takes one slot a round;
                // a lighter one only while it is behind its share.
                if count[i] * max_weight >= round * weights[i] {
                    continue;
                }
                // `m` is prime and `skip` in 1..m, so the walk visits every
                // slot and finds a free one while any is left.
                loop {
                    let slot = position[i] as usize;
                    position[i] = (position[i] + skip[i]) % m64;
                    if table[slot] == EMPTY {
                        table[slot] = i as u32;
                        break;
                    }
                }
                count[i] += 1;
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The endpoint for `key`; if it is ineligible, the next eligible one
    /// further along the table, so a key displaced by an unhealthy endpoint
    /// always falls back to the same place and returns when it recovers.
    pub(super) fn lookup(
        &self,
        key: u64,
        eligible: &impl Fn(usize) -> bool,
        endpoints: usize,
    ) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        // Mixed again so that a caller's raw key (not from `hash_key`)
        // still spreads over the table.
        let start = (fmix64(key) % m as u64) as usize;
        let first = self.table[start] as usize;
        if eligible(first) {
            return Some(first);
        }
        if !(0..endpoints).any(eligible) {
            return None;
        }
        (1..m)
            .map(|step| self.table[(start + step) % m] as usize)
            .find(|&i| eligible(i))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

/// The smallest prime ≥ max(65,537, 100 × endpoints).
fn table_size(endpoints: usize) -> usize {
    let mut m = DEFAULT_TABLE_SIZE.max(endpoints.saturating_mul(100));
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
