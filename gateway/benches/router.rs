//! Route lookup cost with 10 and with 10,000 routes (`cargo bench -p wasmgate
//! --bench router`). The brief's target: the large table within 2× of the
//! small one. Prints ns per lookup and the ratio.

use http::{HeaderMap, Method};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;
use wasmgate::router::{RequestHead, Router};

fn table(n: usize) -> Router {
    let mut src = String::from(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    for i in 0..n {
        let kind = match i % 3 {
            0 => format!("path_prefix = \"/svc{i}/api\""),
            1 => format!("path = \"/svc{i}/exact\""),
            _ => format!("path_pattern = \"/svc{i}/users/{{id}}\""),
        };
        src.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhosts = [\"h{}.example.com\"]\n{kind}\nupstream = \"u\"\n",
            i % 50
        ));
    }
    let cfg = match wasmgate::config::parse(Path::new("bench.toml"), &src) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    match Router::new(cfg.routes) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn measure(router: &Router, requests: &[(String, String)]) -> f64 {
    let headers = HeaderMap::new();
    let iterations = 2_000_000;
    let start = Instant::now();
    for i in 0..iterations {
        let (host, path) = &requests[i % requests.len()];
        let head = RequestHead {
            listener: "main",
            host,
            path,
            query: None,
            method: &Method::GET,
            headers: &headers,
        };
        black_box(router.lookup(black_box(&head)).map(|m| m.index));
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn requests(n: usize) -> Vec<(String, String)> {
    (0..64)
        .map(|k| {
            let i = (k * 7919) % n;
            let path = match i % 3 {
                0 => format!("/svc{i}/api/v1/items"),
                1 => format!("/svc{i}/exact"),
                _ => format!("/svc{i}/users/42"),
            };
            (format!("h{}.example.com", i % 50), path)
        })
        .collect()
}

fn main() {
    let small = table(10);
    let large = table(10_000);
    let small_ns = measure(&small, &requests(10));
    let large_ns = measure(&large, &requests(10_000));
    println!(
        "router lookup: 10 routes {small_ns:.0} ns, 10,000 routes {large_ns:.0} ns, ratio {:.2}",
        large_ns / small_ns
    );
}
