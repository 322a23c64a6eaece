//! Failing plugins are contained: a trap, a spin past the CPU limit, a
//! memory bomb, runaway recursion and oversized output each fail only the
//! request (with the plugin's failure status and a kind on /metrics and in
//! the log), the instance is replaced, and the gateway keeps serving.
//! `failure = "open"` skips a failing plugin instead.

use crate::plugins::{api_route, config, get, has_field, with_side};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::upstream::{self, Mode, Upstream};
use wasmgate_e2e::{plugins, Gateway};

const T: Duration = Duration::from_secs(5);

/// A gateway with plugin `p` (component `wasm`, `[[plugins]]` lines
/// `decl_extra`) on route `/fail` with `plugin_config`, and a route `/ok`
/// without plugins; both forward to an echo upstream.
async fn start(wasm: &str, decl_extra: &str, plugin_config: &str) -> Result<(Gateway, Upstream)> {
    let decl = plugins::decl("p", wasm, decl_extra);
    let echo = upstream::echo().await?;
    let config = config(
        echo.addr(),
        &format!(
            r#"{decl}
[[routes]]
name = "fail"
path_prefix = "/fail"
upstream = "backend"
plugins = [ {{ plugin = "p", config = {plugin_config} }} ]

[[routes]]
name = "ok"
path_prefix = "/ok"
upstream = "backend"
"#
        ),
    );
    Ok((Gateway::start(&config).await?, echo))
}

/// The value of `wasmgate_plugin_errors_total{plugin="p",kind=kind}`.
async fn errors_of(gw: &Gateway, kind: &str) -> Result<f64> {
    let m = gw.admin_get("/metrics").await?.text();
    Ok(crate::admin::metric(
        &m,
        "wasmgate_plugin_errors_total",
        &[("plugin", "p"), ("kind", kind)],
    )
    .unwrap_or(0.0))
}

/// Two requests to `/fail` each fail with `status` and plugin `p`'s
/// failure `kind` (the second on a replacement instance), are logged with
/// the request id, phase and kind, and counted; `/ok` answers right after.
/// Returns how long each failing request took.
async fn assert_contained(
    gw: &mut Gateway,
    kind: &str,
    phase: &str,
    status: u16,
) -> Result<Vec<Duration>> {
    let http = Http1::new();
    let mut took = Vec::new();
    for i in 1..=2 {
        let id = format!("fail-{kind}-{i}");
        let start = Instant::now();
        let resp = get(&http, &gw.url("main", "/fail"), &id, &[]).await?;
        took.push(start.elapsed());
        resp.expect_gateway_error(status)?;
        let j = resp.json()?;
        assert_eq!(
            j["error"].as_str(),
            Some(format!("plugin `p` failed ({kind})").as_str()),
            "request {i}: {j}"
        );
        assert_eq!(resp.header("x-request-id"), Some(id.as_str()));

        let line = gw
            .wait_stderr(&["plugin=p", &id, "kind="], T)
            .await
            .context("no log line for the plugin failure")?;
        ensure!(
            has_field(&line, "kind", kind) && has_field(&line, "phase", phase),
            "log line lacks kind={kind} phase={phase}: {line}"
        );

        let ok = get(
            &http,
            &gw.url("main", "/ok"),
            &format!("ok-after-{kind}-{i}"),
            &[],
        )
        .await?;
        assert_eq!(
            ok.status,
            200,
            "the healthy route after a {kind} failure: {}",
            ok.text()
        );
    }
    crate::admin::metrics_until(gw, |m| {
        crate::admin::metric(
            m,
            "wasmgate_plugin_errors_total",
            &[("plugin", "p"), ("kind", kind)],
        ) == Some(2.0)
    })
    .await
    .with_context(|| format!("wasmgate_plugin_errors_total{{plugin=p,kind={kind}}} is not 2"))?;
    Ok(took)
}

#[tokio::test]
async fn a_panic_in_the_request_phase_is_contained() -> Result<()> {
    let (mut gw, echo) = start("trap", "", r#"{ phase = "request", how = "panic" }"#).await?;
    assert_contained(&mut gw, "unreachable", "request", 500).await?;
    assert_eq!(echo.count(), 2, "only the /ok requests go upstream");
    // The SDK's panic hook logs the panic message through the host first,
    // tagged with the plugin and the request.
    let line = gw
        .wait_stderr(
            &[
                "deliberate panic in the request phase",
                "fail-unreachable-1",
            ],
            T,
        )
        .await
        .context("the panic message was not logged")?;
    ensure!(
        has_field(&line, "plugin", "p"),
        "panic log line without plugin=p: {line}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_in_the_response_phase_is_contained() -> Result<()> {
    let (mut gw, echo) =
        start("trap", "", r#"{ phase = "response", how = "unreachable" }"#).await?;
    assert_contained(&mut gw, "unreachable", "response", 500).await?;
    // The request phase passed, so the upstream was called each time.
    assert_eq!(echo.count(), 4);
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_sleeps_is_refused_the_wait() -> Result<()> {
    let (mut gw, echo) = start("trap", "", r#"{ phase = "request", how = "sleep" }"#).await?;
    assert_contained(&mut gw, "wait", "request", 500).await?;
    assert_eq!(echo.count(), 2, "only the /ok requests go upstream");
    Ok(())
}

#[tokio::test]
async fn a_plugin_using_the_response_head_in_the_request_phase_is_contained() -> Result<()> {
    let (mut gw, echo) = start("trap", "", r#"{ phase = "request", how = "other-head" }"#).await?;
    assert_contained(&mut gw, "phase", "request", 500).await?;
    assert_eq!(echo.count(), 2, "only the /ok requests go upstream");
    gw.wait_stderr(
        &["`response` functions can only be called during on-response and on-response-body"],
        T,
    )
    .await
    .context("the misuse was not explained in the log")?;
    Ok(())
}

#[tokio::test]
async fn a_plugin_using_the_request_head_in_the_response_phase_is_contained() -> Result<()> {
    let (mut gw, echo) = start("trap", "", r#"{ phase = "response", how = "other-head" }"#).await?;
    assert_contained(&mut gw, "phase", "response", 500).await?;
    assert_eq!(echo.count(), 4);
    Ok(())
}

#[tokio::test]
async fn a_spinning_plugin_is_stopped_at_its_cpu_limit() -> Result<()> {
    let (mut gw, echo) = start("spin", r#"cpu_limit = "50ms""#, "{}").await?;
    let took = assert_contained(&mut gw, "deadline", "request", 500).await?;
    for t in &took {
        ensure!(
            *t >= Duration::from_millis(40)
                && *t < Duration::from_millis(50) + Duration::from_secs(1),
            "a spin under a 50ms CPU limit answered after {t:?}"
        );
    }
    assert_eq!(echo.count(), 2);
    Ok(())
}

/// A memory bomb capped at `cap` bytes: contained twice, and the
/// gateway's peak RSS grew by less than `max_growth` bytes.
async fn memory_bomb(cap: u64, max_growth: u64) -> Result<()> {
    // A generous CPU limit, so that the memory cap is what stops the bomb.
    let decl = format!("memory_limit_bytes = {cap}\ncpu_limit = \"2s\"");
    let (mut gw, echo) = start("memory_bomb", &decl, "{}").await?;
    let ok = Http1::new().get(&gw.url("main", "/ok")).await?;
    assert_eq!(ok.status, 200);
    let (rss, peak) = (gw.rss_bytes()?, gw.peak_rss_bytes()?);
    assert_contained(&mut gw, "memory", "request", 500).await?;
    // The bombs' memory is given back when their instances are discarded,
    // so the current RSS shows leaks and the peak (VmHWM) shows the cap.
    let (rss_after, peak_after) = (gw.rss_bytes()?, gw.peak_rss_bytes()?);
    let mib = |b: u64| b >> 20;
    ensure!(
        peak_after.saturating_sub(peak) < max_growth,
        "gateway peak RSS grew by {} MiB ({} → {} MiB) under {} MiB-capped bombs",
        mib(peak_after.saturating_sub(peak)),
        mib(peak),
        mib(peak_after),
        mib(cap)
    );
    ensure!(
        rss_after.saturating_sub(rss) < 32 << 20,
        "gateway RSS stayed {} MiB higher after the bombs ({} → {} MiB)",
        mib(rss_after.saturating_sub(rss)),
        mib(rss),
        mib(rss_after)
    );
    assert_eq!(echo.count(), 3);
    Ok(())
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_its_memory_limit() -> Result<()> {
    // A 16 MiB cap against the engine-wide 256 MiB: were the plugin's cap
    // not applied, each bomb would take ~256 MiB.
    memory_bomb(16 << 20, 96 << 20).await
}

#[tokio::test]
async fn runaway_recursion_is_stopped_on_either_stack() -> Result<()> {
    // Frames on the wasm stack only hit the host's stack cap; frames with a
    // shadow-stack array run off the bottom of linear memory first.
    for (stack, kind) in [("native", "stack"), ("shadow", "memory_access")] {
        let (mut gw, echo) = start("recurse", "", &format!("{{ stack = \"{stack}\" }}")).await?;
        assert_contained(&mut gw, kind, "request", 500)
            .await
            .with_context(|| format!("recurse with stack = {stack}"))?;
        assert_eq!(echo.count(), 2);
    }
    Ok(())
}

#[tokio::test]
async fn output_over_max_output_bytes_is_refused() -> Result<()> {
    // 256 KiB of output against a 64 KiB cap, well inside the default
    // 32 MiB of memory: as a response body, and as a request header. (The
    // CPU limit is generous: copying output costs time too, and this test
    // is about the output cap.)
    // And as many replies held at once (small ones: 1,000 against the
    // host's limit of 8 live replies).
    for (place, bytes) in [
        ("body", 262144),
        ("request-header", 262144),
        ("replies", 1000),
    ] {
        let (mut gw, echo) = start(
            "huge_output",
            "max_output_bytes = 65536\ncpu_limit = \"2s\"",
            &format!("{{ bytes = {bytes}, where = \"{place}\" }}"),
        )
        .await?;
        assert_contained(&mut gw, "output", "request", 500)
            .await
            .with_context(|| format!("huge-output where = {place}"))?;
        assert_eq!(
            echo.count(),
            2,
            "{place}: the oversized request went upstream"
        );
    }
    Ok(())
}

#[tokio::test]
async fn failure_status_is_honoured() -> Result<()> {
    let (mut gw, _echo) = start("trap", "failure_status = 503", "{}").await?;
    assert_contained(&mut gw, "unreachable", "request", 503).await?;
    Ok(())
}

#[tokio::test]
async fn a_fail_open_plugin_is_skipped_and_the_chain_goes_on() -> Result<()> {
    let wasm = plugins::decl("p", "trap", r#"failure = "open""#)
        + &plugins::decl("hello", "hello_header", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "p", config = { phase = "request" } },
  { plugin = "hello", config = { greeting = "still here" } },
]"#,
    );
    let mut gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for i in 1..=2 {
        let id = format!("open-{i}");
        let resp = get(&http, &gw.url("main", "/"), &id, &[]).await?;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.header("x-hello-plugin"), Some("still here"));
        assert_eq!(crate::plugins::echoed(&resp, "x-hello")?, ["still here"]);
        let line = gw.wait_stderr(&["plugin=p", &id, "kind="], T).await?;
        ensure!(
            has_field(&line, "kind", "unreachable") && line.contains("fail-open"),
            "no fail-open log line: {line}"
        );
        crate::admin::metrics_until(&gw, |m| {
            crate::admin::metric(
                m,
                "wasmgate_plugin_errors_total",
                &[("plugin", "p"), ("kind", "unreachable")],
            ) == Some(f64::from(i))
        })
        .await?;
    }
    assert_eq!(echo.count(), 2);
    assert_eq!(errors_of(&gw, "unreachable").await?, 2.0);
    Ok(())
}

/// With every one of the engine's `plugin_instance_slots` in use, a request
/// that needs another instance gets 503 (not the plugin's failure status:
/// the plugin did nothing wrong), logged and counted as kind `capacity`;
/// the gateway keeps serving, and the plugin route works again once an
/// instance is free.
#[tokio::test]
async fn a_request_without_a_free_instance_slot_gets_503() -> Result<()> {
    let echo = upstream::echo().await?;
    let side = upstream::controlled("side").await?;
    side.set_mode(Mode::Hang);
    let decl = plugins::decl("p", "http_caller", "failure_status = 500");
    let rest = format!(
        r#"{decl}
[[routes]]
name = "fail"
path_prefix = "/fail"
upstream = "backend"
plugins = [ {{ plugin = "p", config = {{ upstream = "side", timeout_ms = 3000 }} }} ]

[[routes]]
name = "ok"
path_prefix = "/ok"
upstream = "backend"
"#
    );
    let toml = format!(
        "plugin_instance_slots = 1\n{}",
        with_side(echo.addr(), side.addr(), &rest)
    );
    let mut gw = Gateway::start(&toml).await?;
    let http = Http1::new();

    // The first request holds the only instance while its outbound call hangs.
    let holder = tokio::spawn({
        let (http, url) = (http.clone(), gw.url("main", "/fail"));
        async move { get(&http, &url, "holder", &[]).await }
    });
    side.wait_traffic(1, T).await?;

    let resp = get(&http, &gw.url("main", "/fail"), "no-slot", &[]).await?;
    resp.expect_gateway_error(503)?;
    let j = resp.json()?;
    assert_eq!(
        j["error"].as_str(),
        Some("plugin `p` failed (capacity)"),
        "{j}"
    );
    let line = gw
        .wait_stderr(&["plugin=p", "no-slot", "kind="], T)
        .await
        .context("no log line for the capacity failure")?;
    ensure!(
        has_field(&line, "kind", "capacity") && line.contains("plugin_instance_slots"),
        "log line lacks kind=capacity and the setting's name: {line}"
    );
    assert_eq!(errors_of(&gw, "capacity").await?, 1.0);
    let ok = get(&http, &gw.url("main", "/ok"), "ok-while-full", &[]).await?;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // The holder's call times out; it goes on without the call's answer and
    // gives the instance back.
    side.set_mode(Mode::Ok);
    let held = holder.await??;
    assert_eq!(held.status, 200, "{}", held.text());
    let again = get(&http, &gw.url("main", "/fail"), "after", &[]).await?;
    assert_eq!(again.status, 200, "{}", again.text());
    Ok(())
}
