use super::*;

const ALL: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::WeightedRoundRobin,
    Policy::LeastRequest,
    Policy::Random,
    Policy::ConsistentHash,
];

fn counts(b: &Balancer, picks: usize, eligible: impl Fn(usize) -> bool, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for k in 0..picks {
        let key = Some(hash_key(&(k as u64).to_le_bytes()));
        match b.pick(key, &eligible, |_| 0) {
            Some(i) => c[i] += 1,
            None => panic!("{:?}: nothing picked", b.policy()),
        }
    }
    c
}

fn assert_share(c: &[usize], expected: &[f64], tolerance: f64) {
    let total: usize = c.iter().sum();
    for (i, (&got, &want)) in c.iter().zip(expected).enumerate() {
        let share = got as f64 / total as f64;
        assert!(
            (share - want).abs() <= tolerance,
            "endpoint {i}: share {share:.4}, expected {want:.4} ± {tolerance} ({c:?})"
        );
    }
}

#[test]
fn round_robin_is_exactly_equal_and_ignores_weights() {
    let b = Balancer::new(Policy::RoundRobin, &[1, 5, 1, 9]);
    assert_eq!(counts(&b, 4000, |_| true, 4), vec![1000; 4]);
}

#[test]
fn round_robin_shares_an_ineligible_turn_evenly() {
    let b = Balancer::new(Policy::RoundRobin, &[1; 4]);
    // 4 × 3 picks make a full cycle of redistributed turns.
    assert_eq!(counts(&b, 1200, |i| i != 1, 4), vec![400, 0, 400, 400]);
}

#[test]
fn smooth_weighted_round_robin_is_exact_and_interleaved() {
    let b = Balancer::new(Policy::WeightedRoundRobin, &[1, 2, 3]);
    assert_eq!(counts(&b, 6000, |_| true, 3), vec![1000, 2000, 3000]);
    // nginx's sequence for 5:1:1.
    let b = Balancer::new(Policy::WeightedRoundRobin, &[5, 1, 1]);
    let seq: Vec<usize> = (0..7)
        .filter_map(|_| b.pick(None, |_| true, |_| 0))
        .collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn smooth_weighted_round_robin_keeps_proportions_when_one_is_skipped() {
    let b = Balancer::new(Policy::WeightedRoundRobin, &[1, 2, 3, 4]);
    let c = counts(&b, 6000, |i| i != 3, 4);
    assert_eq!(c, vec![1000, 2000, 3000, 0]);
}

#[test]
fn precomputed_cycle_matches_the_live_algorithm() {
    let b = Balancer::new(Policy::WeightedRoundRobin, &[3, 1, 2, 5]);
    assert_eq!(b.cycle.len(), 11);
    let live = Balancer::new(Policy::WeightedRoundRobin, &[3, 1, 2, 5]);
    for _ in 0..33 {
        assert_eq!(
            b.pick(None, |_| true, |_| 0),
            live.smooth_weighted(&|_| true)
        );
    }
}

#[test]
fn weights_too_large_to_precompute_are_balanced_live() {
    let b = Balancer::new(
        Policy::WeightedRoundRobin,
        &[1_000_000, 2_000_000, 3_000_000],
    );
    assert!(b.cycle.is_empty());
    let c = counts(&b, 6000, |_| true, 3);
    for (got, want) in c.iter().zip([1000, 2000, 3000]) {
        assert!(got.abs_diff(want) <= 3, "{c:?}");
    }
    let c = counts(&b, 6000, |i| i != 1, 3);
    for (got, want) in c.iter().zip([1500, 0, 4500]) {
        assert!(got.abs_diff(want) <= 3, "{c:?}");
    }
}

#[test]
fn weighted_round_robin_with_equal_weights_is_round_robin() {
    let b = Balancer::new(Policy::WeightedRoundRobin, &[3, 3, 3]);
    let seq: Vec<usize> = (0..6)
        .filter_map(|_| b.pick(None, |_| true, |_| 0))
        .collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn random_is_weighted() {
    let b = Balancer::new(Policy::Random, &[1, 2, 3]);
    let c = counts(&b, 60_000, |_| true, 3);
    assert_share(&c, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0], 0.015);
    let b = Balancer::new(Policy::Random, &[1; 4]);
    assert_share(&counts(&b, 40_000, |_| true, 4), &[0.25; 4], 0.015);
}

#[test]
fn random_keeps_proportions_when_one_is_skipped() {
    let b = Balancer::new(Policy::Random, &[1, 2, 3, 4]);
    let c = counts(&b, 60_000, |i| i != 3, 4);
    assert_share(&c, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0], 0.015);
}

#[test]
fn least_request_prefers_lower_load() {
    let b = Balancer::new(Policy::LeastRequest, &[1; 4]);
    let loads = [10, 0, 10, 10];
    let mut c = [0usize; 4];
    for _ in 0..16_000 {
        if let Some(i) = b.pick(None, |_| true, |i| loads[i]) {
            c[i] += 1;
        }
    }
    // Endpoint 1 wins whenever it is one of the two candidates: 1 − (3/4)².
    let share = c[1] as f64 / 16_000.0;
    assert!((share - 7.0 / 16.0).abs() < 0.03, "{c:?}");

    // The busiest endpoint is only picked when drawn twice: (1/4)².
    let loads = [0, 1, 2, 100];
    let mut busiest = 0;
    for _ in 0..16_000 {
        if b.pick(None, |_| true, |i| loads[i]) == Some(3) {
            busiest += 1;
        }
    }
    assert!(busiest < 1_500, "busiest picked {busiest} times");
}

#[test]
fn least_request_divides_load_by_weight() {
    let b = Balancer::new(Policy::LeastRequest, &[1, 4]);
    // 3 requests on weight 1 weigh more than 8 on weight 4.
    let loads = [3, 8];
    for _ in 0..1000 {
        let Some(i) = b.pick(None, |_| true, |i| loads[i]) else {
            panic!("nothing picked");
        };
        // Only a draw of endpoint 0 twice can pick it.
        if i == 0 {
            continue;
        }
        assert_eq!(i, 1);
    }
    // At equal (zero) load the weighted draw decides.
    let c = counts(&b, 50_000, |_| true, 2);
    assert_share(&c, &[0.2, 0.8], 0.015);
}

#[test]
fn consistent_hash_sends_a_key_to_the_same_endpoint() {
    let ids = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    let a = Balancer::with_ids(Policy::ConsistentHash, &[1; 4], &ids);
    let b = Balancer::with_ids(Policy::ConsistentHash, &[1; 4], &ids);
    for k in 0..1000u32 {
        let key = Some(hash_key(format!("user-{k}").as_bytes()));
        let first = a.pick(key, |_| true, |_| 0);
        assert_eq!(first, a.pick(key, |_| true, |_| 0));
        assert_eq!(first, b.pick(key, |_| true, |_| 0), "rebuilt table differs");
    }
}

#[test]
fn consistent_hash_spreads_keys_by_weight() {
    let b = Balancer::with_ids(Policy::ConsistentHash, &[1; 4], &["a", "b", "c", "d"]);
    assert_share(&counts(&b, 40_000, |_| true, 4), &[0.25; 4], 0.02);
    let b = Balancer::with_ids(Policy::ConsistentHash, &[1, 3], &["a", "b"]);
    assert_share(&counts(&b, 40_000, |_| true, 2), &[0.25, 0.75], 0.02);
}

#[test]
fn consistent_hash_remaps_little_when_an_endpoint_leaves() {
    let four = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
    let three = ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"];
    let before = Balancer::with_ids(Policy::ConsistentHash, &[1; 4], &four);
    let after = Balancer::with_ids(Policy::ConsistentHash, &[1; 3], &three);
    let keys = 20_000;
    let mut moved = 0;
    let mut was_on_removed = 0;
    for k in 0..keys {
        let key = Some(hash_key(format!("session-{k}").as_bytes()));
        let Some(old) = before.pick(key, |_| true, |_| 0) else {
            panic!("nothing picked");
        };
        let Some(new) = after.pick(key, |_| true, |_| 0) else {
            panic!("nothing picked");
        };
        if four[old] == "10.0.0.2:80" {
            was_on_removed += 1;
        } else if four[old] != three[new] {
            moved += 1;
        }
    }
    let moved_share = moved as f64 / keys as f64;
    assert!(was_on_removed > keys / 5, "{was_on_removed}");
    assert!(moved_share < 0.03, "{moved_share:.4} of other keys moved");
}

#[test]
fn consistent_hash_falls_back_stably_and_moves_only_displaced_keys() {
    let b = Balancer::with_ids(Policy::ConsistentHash, &[1; 4], &["a", "b", "c", "d"]);
    for k in 0..5_000u32 {
        let key = Some(hash_key(&k.to_le_bytes()));
        let home = b.pick(key, |_| true, |_| 0);
        let fallback = b.pick(key, |i| i != 2, |_| 0);
        if home == Some(2) {
            assert_ne!(fallback, Some(2));
            assert_eq!(fallback, b.pick(key, |i| i != 2, |_| 0));
        } else {
            assert_eq!(fallback, home);
        }
    }
}

#[test]
fn consistent_hash_without_key_picks_at_random() {
    let b = Balancer::new(Policy::ConsistentHash, &[1; 4]);
    let mut c = [0usize; 4];
    for _ in 0..4000 {
        if let Some(i) = b.pick(None, |_| true, |_| 0) {
            c[i] += 1;
        }
    }
    assert!(c.iter().all(|&n| n > 800), "{c:?}");
}

#[test]
fn maglev_table_is_prime_and_grows_with_endpoints() {
    let small = Maglev::new(&["a".to_string()], &[1]);
    assert_eq!(small.len(), maglev::DEFAULT_TABLE_SIZE);
    let ids: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
        .collect();
    let big = Maglev::new(&ids, &vec![1; 1000]);
    assert!(big.len() >= 100_000);
    assert!((2..)
        .take_while(|d| d * d <= big.len())
        .all(|d| !big.len().is_multiple_of(d)));
}

#[test]
fn ineligible_endpoints_are_never_picked() {
    for policy in ALL {
        let b = Balancer::with_ids(policy, &[1, 2, 3, 4, 5], &["a", "b", "c", "d", "e"]);
        for mask in 1u32..32 {
            let eligible = |i: usize| mask & (1 << i) != 0;
            for k in 0..200u64 {
                let key = Some(hash_key(&k.to_le_bytes()));
                let Some(i) = b.pick(key, eligible, |i| i) else {
                    panic!("{policy:?}, mask {mask:05b}: nothing picked");
                };
                assert!(eligible(i), "{policy:?}, mask {mask:05b}: picked {i}");
            }
        }
    }
}

#[test]
fn none_when_nothing_is_eligible() {
    for policy in ALL {
        let b = Balancer::new(policy, &[1, 2, 3]);
        assert_eq!(b.pick(Some(7), |_| false, |_| 0), None, "{policy:?}");
        assert_eq!(b.pick(None, |_| false, |_| 0), None, "{policy:?}");
        let empty = Balancer::new(policy, &[]);
        assert_eq!(empty.pick(Some(7), |_| true, |_| 0), None, "{policy:?}");
    }
}

#[test]
fn hash_key_is_fnv1a_then_fmix64() {
    // Published FNV-1a 64 test vectors.
    assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(
        fnv1a(0xcbf2_9ce4_8422_2325, b"foobar"),
        0x8594_4171_f739_67e8
    );
    // Pinned: changing this moves every consistent-hash key in production.
    assert_eq!(hash_key(b"a"), fmix64(0xaf63_dc4c_8601_ec8c));
    assert_eq!(hash_key(b"user-42"), 0xa395_32c7_ab05_1e8d);
    assert_eq!(hash_key(b"10.0.0.1"), 0xc879_e56d_dc6c_5c88);
    assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
}
