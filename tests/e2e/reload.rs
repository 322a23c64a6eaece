//! Config reload: by SIGHUP, `POST /reload` and file change; under load
//! without failed requests; rejected configs leave the old one serving.

use anyhow::{ensure, Context, Result};
use http::Request;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

/// The standard proxy config whose route sets `x-gen: <gen>` on responses.
fn gen_config(echo: SocketAddr, gen: u32) -> String {
    conf::proxy(
        echo,
        "",
        &format!("[routes.response_headers]\nset = {{ \"x-gen\" = \"{gen}\" }}\n"),
    )
}

/// The `x-gen` a fresh request is answered with.
async fn served_gen(gw: &Gateway) -> Result<String> {
    let resp = Http1::unpooled().get(&gw.url("main", "/probe")).await?;
    ensure!(resp.status == 200, "probe: {} {}", resp.status, resp.text());
    Ok(resp.header("x-gen").unwrap_or("<none>").to_string())
}

/// `n` out of a `reload ok generation=n` / `reload failed generation=n` line.
fn generation(line: &str) -> Result<u64> {
    line.rsplit_once("generation=")
        .and_then(|(_, n)| n.trim().parse().ok())
        .with_context(|| format!("no generation in {line:?}"))
}

/// Waits for `reload ok` lines until requests are answered with `gen`
/// (a file write may also be picked up by the watcher, so an earlier line
/// can belong to a reload of older content). Returns the last generation.
async fn wait_reloaded_to(gw: &mut Gateway, gen: u32) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = gw.wait_line("reload ok", left).await?;
        if served_gen(gw).await? == gen.to_string() {
            return generation(&line);
        }
    }
}

#[tokio::test]
async fn sighup_admin_and_file_change_each_reload() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&gen_config(echo.addr(), 1)).await?;
    assert_eq!(served_gen(&gw).await?, "1");

    // Unchanged file: nothing but the trigger itself can cause a reload.
    gw.sighup()?;
    assert_eq!(gw.wait_line("reload ", T).await?, "reload ok generation=2");

    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    let j: Value = serde_json::from_str(&body)?;
    assert_eq!(j, serde_json::json!({"status": "ok", "generation": 3}));
    assert_eq!(gw.wait_line("reload ", T).await?, "reload ok generation=3");

    gw.write_config(&gen_config(echo.addr(), 4))?;
    assert_eq!(gw.wait_line("reload ", T).await?, "reload ok generation=4");
    assert_eq!(served_gen(&gw).await?, "4");

    let metrics = gw.admin_get("/metrics").await?.text();
    let ok = crate::admin::metric(
        &metrics,
        "wasmgate_config_reloads_total",
        &[("result", "ok")],
    );
    ensure!(
        ok >= Some(3.0),
        "reloads_total{{result=ok}} is {ok:?}:\n{metrics}"
    );
    Ok(())
}

/// Waits until the load tasks have completed `n` more requests.
pub async fn wait_load(done: &mut watch::Receiver<usize>, n: usize) -> Result<()> {
    let target = *done.borrow() + n;
    tokio::time::timeout(T, done.wait_for(|d| *d >= target))
        .await
        .context("load stalled")?
        .context("load tasks gone")?;
    Ok(())
}

#[tokio::test]
async fn hot_reload_under_load_fails_no_request() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&gen_config(echo.addr(), 1)).await?;
    let url = gw.url("main", "/load");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let gens = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (stop, failures, gens, done, url) = (
            stop.clone(),
            failures.clone(),
            gens.clone(),
            done_tx.clone(),
            url.clone(),
        );
        tasks.spawn(async move {
            // One pooled client per task: keep-alive connections live across reloads.
            let http = Http1::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let req = if i.is_multiple_of(2) {
                    Request::post(format!("{url}/{t}/{i}")).body(client::full("payload"))
                } else {
                    Request::get(format!("{url}/{t}/{i}")).body(client::empty())
                };
                let outcome = match req {
                    Ok(req) => http.fetch(req).await,
                    Err(e) => Err(e.into()),
                };
                match outcome {
                    Ok(resp) if resp.status == 200 => {
                        if let Some(g) = resp.header("x-gen") {
                            gens.lock().unwrap().insert(g.to_string());
                        }
                    }
                    Ok(resp) => failures.lock().unwrap().push(format!(
                        "task {t} request {i}: {} {}",
                        resp.status,
                        resp.text()
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("task {t} request {i}: {e:#}")),
                }
                done.send_modify(|n| *n += 1);
            }
        });
    }

    wait_load(&mut done_rx, 20).await?;

    let mut last_generation = 1;
    for gen in 2..=11u32 {
        // Lines from earlier steps (the watcher also sees admin and SIGHUP
        // steps' writes) must not be taken for this step's reload.
        gw.skip_lines();
        gw.write_config(&gen_config(echo.addr(), gen))?;
        let generation = match gen % 3 {
            0 => {
                let (status, body) = gw.reload_admin().await?;
                ensure!(status == 200, "admin reload to {gen}: {status} {body}");
                let j: Value = serde_json::from_str(&body)?;
                // The admin reload is synchronous: the new config serves now.
                assert_eq!(served_gen(&gw).await?, gen.to_string());
                j["generation"].as_u64().context("no generation")?
            }
            1 => {
                gw.sighup()?;
                wait_reloaded_to(&mut gw, gen).await?
            }
            _ => wait_reloaded_to(&mut gw, gen).await?,
        };
        ensure!(
            generation > last_generation,
            "generation went from {last_generation} to {generation}"
        );
        last_generation = generation;
        wait_load(&mut done_rx, 20).await?;
    }
    wait_load(&mut done_rx, 40).await?;
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = tasks.join_next().await {
        r?;
    }

    let failures = failures.lock().unwrap().clone();
    let total = *done_rx.borrow();
    ensure!(
        failures.is_empty(),
        "{} of {total} requests failed during reloads; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(total >= 200, "only {total} requests ran during the reloads");
    let gens = gens.lock().unwrap().clone();
    ensure!(
        gens.contains("11"),
        "the last generation was never served: {gens:?}"
    );
    let reloads = gw
        .stdout_lines()
        .iter()
        .filter(|l| l.starts_with("reload ok"))
        .count();
    ensure!(reloads >= 10, "only {reloads} `reload ok` lines");
    ensure!(
        !gw.stdout_lines()
            .iter()
            .any(|l| l.starts_with("reload failed")),
        "a reload failed:\n{}",
        gw.report()
    );
    Ok(())
}

/// Checks a 400 reload answer: every error is `FILE:LINE:COL: message`,
/// and one of them is at `line` and mentions `needle`.
pub fn assert_located_errors(body: &str, file: &str, line: usize, needle: &str) -> Result<()> {
    let j: Value = serde_json::from_str(body).with_context(|| format!("reload body: {body}"))?;
    ensure!(j["status"] == "error", "reload body: {body}");
    let errors: Vec<&str> = j["errors"]
        .as_array()
        .context("no errors array")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(!errors.is_empty(), "empty errors: {body}");
    for e in &errors {
        let rest = e
            .strip_prefix(file)
            .and_then(|r| r.strip_prefix(':'))
            .with_context(|| format!("error {e:?} does not start with {file}:"))?;
        let mut parts = rest.splitn(3, ':');
        let l = parts.next().and_then(|p| p.parse::<usize>().ok());
        let c = parts.next().and_then(|p| p.parse::<usize>().ok());
        ensure!(
            l.is_some() && c.is_some(),
            "error {e:?} is not FILE:LINE:COL: …"
        );
    }
    let at = format!("{file}:{line}:");
    ensure!(
        errors
            .iter()
            .any(|e| e.starts_with(&at) && e.contains(needle)),
        "no error at line {line} mentioning {needle:?}: {errors:#?}"
    );
    Ok(())
}

/// The 1-based line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map_or(0, |i| i + 1)
}

#[tokio::test]
async fn rejected_reloads_keep_the_old_config() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&gen_config(echo.addr(), 1)).await?;
    let file = gw.config_path().display().to_string();

    // A syntax error: an unclosed `[[routes]` header on its own line.
    let broken = format!("{}\n[[routes]\nname = \"x\"\n", gen_config(echo.addr(), 2));
    let broken_line = broken
        .lines()
        .position(|l| l == "[[routes]")
        .map_or(0, |i| i + 1);
    gw.write_config(&broken)?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 400, "{body}");
    assert_located_errors(&body, &file, broken_line, "")?;
    assert_eq!(
        gw.wait_line("reload ", T).await?,
        "reload failed generation=1"
    );
    assert_eq!(served_gen(&gw).await?, "1");

    // A route naming an upstream that does not exist.
    let unknown =
        gen_config(echo.addr(), 3).replace("upstream = \"backend\"", "upstream = \"nope\"");
    gw.write_config(&unknown)?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 400, "{body}");
    assert_located_errors(
        &body,
        &file,
        line_of(&unknown, "upstream = \"nope\""),
        "nope",
    )?;
    assert_eq!(served_gen(&gw).await?, "1");

    assert_eq!(
        gw.wait_line("reload ", T).await?,
        "reload failed generation=1"
    );

    // SIGHUP with the bad file is rejected the same way. (A line the file
    // watcher printed late for one of the writes above would be another
    // rejected reload, so it would not change what is checked here.)
    gw.skip_lines();
    gw.sighup()?;
    assert_eq!(
        gw.wait_line("reload ", T).await?,
        "reload failed generation=1"
    );
    assert_eq!(served_gen(&gw).await?, "1");
    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(m, "wasmgate_config_reloads_total", &[("result", "failed")])
            >= Some(3.0)
    })
    .await
    .context("wasmgate_config_reloads_total{result=\"failed\"} never reached 3")?;
    let ok = crate::admin::metric(
        &gw.admin_get("/metrics").await?.text(),
        "wasmgate_config_reloads_total",
        &[("result", "ok")],
    );
    ensure!(
        ok.unwrap_or(0.0) == 0.0,
        "a broken config counted as a good reload: {ok:?}"
    );

    // A good config is accepted again.
    gw.write_config(&gen_config(echo.addr(), 4))?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    let j: Value = serde_json::from_str(&body)?;
    ensure!(j["generation"].as_u64() >= Some(2), "{body}");
    assert_eq!(served_gen(&gw).await?, "4");
    Ok(())
}

#[tokio::test]
async fn reload_can_switch_the_upstream() -> Result<()> {
    let first = upstream::echo().await?;
    let second = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(first.addr())).await?;
    assert_eq!(Http1::new().get(&gw.url("main", "/")).await?.status, 200);
    gw.write_config(&conf::simple(second.addr()))?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Http1::new().get(&gw.url("main", "/")).await?.status, 200);
    assert_eq!((first.count(), second.count()), (1, 1));
    Ok(())
}

#[tokio::test]
async fn in_flight_request_finishes_on_the_config_it_started_with() -> Result<()> {
    let slow = upstream::slow_headers(Duration::from_millis(1000)).await?;
    let gw = Gateway::start(&gen_config(slow.addr(), 1)).await?;
    let url = gw.url("main", "/slow");
    let in_flight = tokio::spawn(async move { Http1::new().get(&url).await });
    slow.wait_count(1, T).await?;
    gw.write_config(&gen_config(slow.addr(), 2))?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    let resp = in_flight.await??;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-gen"), Some("1"));
    Ok(())
}
