//! Cost of one endpoint pick per balancing policy, with 4 and with 100
//! endpoints, all eligible and with one in four ineligible (`cargo bench -p
//! wasmgate --bench balance`). Prints ns per pick.

use std::hint::black_box;
use std::time::Instant;
use wasmgate::upstream::balance::{hash_key, Balancer, Policy};

const POLICIES: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::WeightedRoundRobin,
    Policy::LeastRequest,
    Policy::Random,
    Policy::ConsistentHash,
];

fn balancer(policy: Policy, n: usize) -> Balancer {
    // Unequal weights, so the weighted policies take their weighted path.
    let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 3) as u32).collect();
    let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8080")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    Balancer::with_ids(policy, &weights, &ids)
}

fn measure(b: &Balancer, loads: &[usize], keys: &[u64], skip_every_fourth: bool) -> f64 {
    let iterations = 2_000_000;
    let start = Instant::now();
    for k in 0..iterations {
        let key = Some(keys[k % keys.len()]);
        let eligible = |i: usize| !skip_every_fourth || i % 4 != 3;
        black_box(b.pick(black_box(key), eligible, |i| loads[i]));
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let keys: Vec<u64> = (0..1024u32)
        .map(|k| hash_key(format!("user-{k}").as_bytes()))
        .collect();
    println!("ns per pick        4 endpoints   100 endpoints   (one in four ineligible: 4 / 100)");
    for policy in POLICIES {
        let mut row = Vec::new();
        for skip in [false, true] {
            for n in [4, 100] {
                let loads: Vec<usize> = (0..n).map(|i| (i * 7) % 11).collect();
                row.push(measure(&balancer(policy, n), &loads, &keys, skip));
            }
        }
        println!(
            "{:<20} {:>8.1} {:>15.1}   ({:.1} / {:.1})",
            policy.name(),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
}
