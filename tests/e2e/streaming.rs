//! Large bodies stream through the gateway in both directions: 64 MiB up
//! and down, with the gateway's resident memory sampled throughout to prove
//! it never holds a whole body.

use anyhow::{ensure, Result};
use http::Request;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::{conf, upstream, Gateway};

const SIZE: u64 = 64 << 20;
/// Allowed RSS growth while 64 MiB pass: well under the body size.
const RSS_BUDGET: u64 = 32 << 20;

/// Samples the gateway's RSS every 5 ms until dropped; keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(gw: &Gateway) -> RssSampler {
        let pid = gw.pid();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                if let Some(rss) = rss(pid) {
                    p.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        RssSampler { peak, stop, task }
    }

    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.peak.load(Ordering::SeqCst)
    }
}

fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Warms the gateway (threads, pools, first allocations) and returns its RSS.
async fn baseline(gw: &Gateway, http: &Http1) -> Result<u64> {
    for _ in 0..3 {
        let resp = http
            .fetch(Request::post(gw.url("main", "/warm")).body(client::generated(256 << 10))?)
            .await?;
        ensure!(resp.status == 200, "warm-up: {}", resp.status);
    }
    gw.rss_bytes()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[tokio::test]
async fn upload_64_mib_streams_to_the_upstream() -> Result<()> {
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&conf::simple(sink.addr())).await?;
    let http = Http1::new();
    let base = baseline(&gw, &http).await?;
    let before = sink.bytes();

    let sampler = RssSampler::start(&gw);
    let resp = http
        .fetch(Request::post(gw.url("main", "/upload")).body(client::generated(SIZE))?)
        .await?;
    let peak = sampler.peak().await;

    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.text(),
        SIZE.to_string(),
        "upstream counted another size"
    );
    assert_eq!(sink.bytes() - before, SIZE);
    ensure!(
        peak.saturating_sub(base) < RSS_BUDGET,
        "gateway RSS grew {:.1} MiB (from {:.1} to {:.1}) while streaming 64 MiB up",
        mib(peak.saturating_sub(base)),
        mib(base),
        mib(peak)
    );
    Ok(())
}

#[tokio::test]
async fn download_64_mib_streams_to_the_client() -> Result<()> {
    let source = upstream::source(SIZE).await?;
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "source"
endpoints = ["{}"]
[[upstreams]]
name = "sink"
endpoints = ["{}"]
[[routes]]
name = "warm"
path = "/warm"
upstream = "sink"
[[routes]]
name = "download"
path = "/download"
upstream = "source"
"#,
        source.addr(),
        sink.addr()
    ))
    .await?;
    let http = Http1::new();
    let base = baseline(&gw, &http).await?;

    let sampler = RssSampler::start(&gw);
    let resp = http
        .send(Request::get(gw.url("main", "/download")).body(client::empty())?)
        .await?;
    assert_eq!(resp.status(), 200);
    let n = client::drain(resp).await?;
    let peak = sampler.peak().await;

    assert_eq!(n, SIZE);
    ensure!(
        peak.saturating_sub(base) < RSS_BUDGET,
        "gateway RSS grew {:.1} MiB (from {:.1} to {:.1}) while streaming 64 MiB down",
        mib(peak.saturating_sub(base)),
        mib(base),
        mib(peak)
    );
    Ok(())
}

#[tokio::test]
async fn h2_upload_streams_too() -> Result<()> {
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&conf::simple(sink.addr())).await?;
    let h2 = client::h2c(gw.addr("main")).await?;
    let resp = h2
        .fetch(Request::post("http://api.test/upload").body(client::generated(8 << 20))?)
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), (8u64 << 20).to_string());
    Ok(())
}
