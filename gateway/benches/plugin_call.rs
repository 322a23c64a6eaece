//! Per-request cost of a header-only plugin, both phases together, measured
//! through the same instance pool the gateway uses:
//! `noop` (call overhead alone) and `header-one` (reads one header, sets one),
//! with 8 and 40 request headers, in `reuse` and `per-request` isolation.
//!
//! Build the plugins first: `(cd plugins && cargo build --release --target wasm32-wasip2)`,
//! then `cargo bench -p wasmgate --bench plugin_call`.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use wasmgate::plugin::testing::{TestPlugin, TestRequest};
use wasmgate::plugin::{Isolation, PluginLimits};

fn wasm(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../plugins/target/wasm32-wasip2/release/{name}.wasm"
    ))
}

fn request(headers: usize) -> TestRequest {
    let mut r = TestRequest::get("/bench?x=1").header("x-bench-in", "value");
    for i in 1..headers {
        r = r.header(
            &format!("x-filler-{i}"),
            "some header value of a typical length",
        );
    }
    r
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn measure(
    plugin: &str,
    isolation: Isolation,
    headers: usize,
    iterations: usize,
) -> (f64, f64) {
    let limits = PluginLimits {
        max_instance_uses: u64::MAX,
        ..PluginLimits::default()
    };
    let p = match TestPlugin::load_with(wasm(plugin), "{}", limits, isolation).await {
        Ok(p) => p,
        Err(e) => panic!("{e} (build the plugins first, see the file header)"),
    };
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let req = request(headers);
        let start = Instant::now();
        let r = p.try_on_request(req).await;
        let resp = p.on_response(200, &[], &[]).await;
        let elapsed = start.elapsed();
        if r.is_err() || resp.is_err() {
            panic!("plugin call failed");
        }
        if i >= iterations / 10 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    rt.block_on(async {
        println!("| plugin | isolation | request headers | median µs (both phases) | p99 µs |");
        println!("|---|---|---|---|---|");
        for plugin in ["noop", "header_one"] {
            for (isolation, name, n) in [
                (Isolation::Reuse, "reuse", 20_000),
                (Isolation::PerRequest, "per-request", 2_000),
            ] {
                for headers in [8, 40] {
                    let (median, p99) = measure(plugin, isolation, headers, n).await;
                    println!("| {plugin} | {name} | {headers} | {median:.2} | {p99:.2} |");
                }
            }
        }
    });
}
