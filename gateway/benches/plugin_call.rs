//! What a header-only plugin adds to a request inside the gateway, without
//! the network: the request and response head phases of a one-plugin
//! [`Chain`], called exactly as the proxy calls them (only the phases the
//! plugin declared, the same heads lent to it request after request).
//!
//! Plugins: `noop` (both head phases, no host calls: the call overhead
//! alone), `header-one` (request phase: reads one header, sets one),
//! `header-transform` (sets a request header, removes a response header: one
//! host call in each phase). With 8 and 40 request headers, in `reuse` and
//! `per-request` isolation. The plugins take turns in every round, so noise
//! from the machine falls on all of them alike.
//!
//! `warm` is the plain loop. `cold` first reads a 1 MiB buffer before every
//! request, evicting the core's L1 and L2 caches (512 KiB here) the way a
//! proxy's own work between two plugin calls does; only the chain is timed.
//!
//! Build the plugins first: `(cd plugins && cargo build --release --target wasm32-wasip2)`,
//! then `cargo bench -p wasmgate --bench plugin_call`.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate::plugin::testing::TestPlugin;
use wasmgate::plugin::{
    Chain, ChainLink, Context, FailurePolicy, Isolation, Outcome, PluginLimits, PluginRequest,
    PluginResponse,
};

const ROUNDS: usize = 5;
const EVICT_BYTES: usize = 1 << 20;

struct Case {
    plugin: &'static str,
    config: &'static str,
    label: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        plugin: "noop",
        config: "{}",
        label: "noop (2 calls)",
    },
    Case {
        plugin: "header_one",
        config: "{}",
        label: "header-one (1 call, 2 host calls)",
    },
    Case {
        plugin: "header_transform",
        config: r#"{"request":{"set":{"x-bench":"1"}},"response":{"remove":["server"]}}"#,
        label: "header-transform (2 calls, 1 host call each)",
    },
];

fn wasm(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../plugins/target/wasm32-wasip2/release/{name}.wasm"
    ))
}

fn request(headers: usize) -> Box<PluginRequest> {
    let mut h = HeaderMap::new();
    h.insert("x-bench-in", HeaderValue::from_static("value"));
    for i in 1..headers {
        let Ok(name) = HeaderName::try_from(format!("x-filler-{i}")) else {
            panic!("invalid header name");
        };
        h.insert(
            name,
            HeaderValue::from_static("some header value of a typical length"),
        );
    }
    Box::new(PluginRequest {
        method: Method::GET,
        scheme: "http",
        authority: "bench.local".into(),
        path_and_query: "/bench?x=1".into(),
        client: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        route: Arc::from("bench"),
        headers: h,
        context: Context::new(),
        path_changed: false,
        authority_override: None,
        upstream: None,
    })
}

fn response() -> PluginResponse {
    PluginResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        context: Context::new(),
    }
}

/// Reads one byte per cache line of `buf`.
fn evict(buf: &[u8]) -> u64 {
    buf.iter().step_by(64).map(|b| u64::from(*b)).sum()
}

/// One request through the chain: the request phase, then the response
/// phase if a plugin declared it, on heads that are reused for the next
/// request (as the proxy lends its own).
async fn one_request(chain: &Chain<'_>, req: &mut Box<PluginRequest>, resp: &mut PluginResponse) {
    let outcome = chain.on_request(req, "bench").await;
    assert!(matches!(outcome, Outcome::Continue), "request phase failed");
    if !chain.takes_response() {
        return;
    }
    let outcome = chain.on_response(resp, "bench").await;
    assert!(
        matches!(outcome, Outcome::Continue),
        "response phase failed"
    );
}

struct Series {
    warm: Vec<Duration>,
    cold: Vec<Duration>,
}

async fn round(
    chain: &Chain<'_>,
    headers: usize,
    n: usize,
    evict_buf: Option<&[u8]>,
    out: &mut Vec<Duration>,
) {
    let (mut req, mut resp) = (request(headers), response());
    // Warm-up: the first calls of a round are not counted.
    for i in 0..n + n / 10 {
        // header-transform removes it: put it back, as every response has one.
        resp.headers
            .insert("server", HeaderValue::from_static("upstream"));
        if let Some(buf) = evict_buf {
            std::hint::black_box(evict(buf));
        }
        let start = Instant::now();
        one_request(chain, &mut req, &mut resp).await;
        if i >= n / 10 {
            out.push(start.elapsed());
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "{:.2} | {:.2}",
        percentile(samples, 0.5),
        percentile(samples, 0.99)
    )
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    let evict_buf = vec![1u8; EVICT_BYTES];
    rt.block_on(async {
        println!("| plugin | isolation | request headers | warm: median µs | warm: p99 µs | cold caches: median µs | cold caches: p99 µs |");
        println!("|---|---|---|---|---|---|---|");
        for (isolation, name, n) in [
            (Isolation::Reuse, "reuse", 10_000),
            (Isolation::PerRequest, "per-request", 500),
        ] {
            let limits = PluginLimits {
                max_instance_uses: u64::MAX,
                ..PluginLimits::default()
            };
            let mut links = Vec::new();
            for case in &CASES {
                let p = TestPlugin::load_with(wasm(case.plugin), case.config, limits.clone(), isolation)
                    .await
                    .unwrap_or_else(|e| panic!("{e} (build the plugins first, see the file header)"));
                links.push([ChainLink {
                    pool: p.pool().clone(),
                    failure: FailurePolicy::Closed {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                    },
                }]);
            }
            for headers in [8, 40] {
                let mut series: Vec<Series> = CASES
                    .iter()
                    .map(|_| Series {
                        warm: Vec::new(),
                        cold: Vec::new(),
                    })
                    .collect();
                for _ in 0..ROUNDS {
                    for (link, s) in links.iter().zip(series.iter_mut()) {
                        let chain = Chain {
                            parts: [link, &[], &[]],
                            route: "bench",
                        };
                        round(&chain, headers, n, None, &mut s.warm).await;
                        round(&chain, headers, n, Some(&evict_buf), &mut s.cold).await;
                    }
                }
                for (case, s) in CASES.iter().zip(series.iter_mut()) {
                    let warm = summary(&mut s.warm);
                    let cold = summary(&mut s.cold);
                    println!("| {} | {name} | {headers} | {warm} | {cold} |", case.label);
                }
            }
        }
    });
}
