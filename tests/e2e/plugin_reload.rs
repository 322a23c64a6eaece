//! Plugins across config reloads: swapped with requests in flight and none
//! failing, KV state kept, and a config whose plugin cannot start rejected
//! while the old one keeps serving.

use crate::plugins::{config, echoed};
use crate::reload::{assert_located_errors, line_of, wait_load};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::{plugins, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

/// hello-header with `greeting` on the catch-all route; with `extra`, a
/// second plugin (declared only then) reports a context entry it sets.
fn greeting_config(echo: SocketAddr, greeting: &str, extra: bool) -> String {
    let mut decls = plugins::decl("hello", "hello_header", "");
    let mut chain = format!(r#"{{ plugin = "hello", config = {{ greeting = "{greeting}" }} }}"#);
    if extra {
        decls += &plugins::decl("ctx", "context_echo", "");
        chain += r#", { plugin = "ctx", config = { set = { extra = "yes" }, echo = ["extra"] } }"#;
    }
    config(
        echo,
        &format!(
            r#"{decls}
[[routes]]
name = "api"
upstream = "backend"
plugins = [ {chain} ]
"#
        ),
    )
}

/// `(x-hello-plugin, x-ctx-extra)` of a fresh request.
async fn served(gw: &Gateway) -> Result<(String, Option<String>)> {
    let resp = Http1::unpooled().get(&gw.url("main", "/probe")).await?;
    ensure!(resp.status == 200, "probe: {} {}", resp.status, resp.text());
    Ok((
        resp.header("x-hello-plugin")
            .unwrap_or("<none>")
            .to_string(),
        resp.header("x-ctx-extra").map(str::to_string),
    ))
}

#[tokio::test]
async fn reloads_swap_plugins_with_requests_in_flight_and_none_fail() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&greeting_config(echo.addr(), "g1", false)).await?;
    let url = gw.url("main", "/load");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (stop, failures, seen, done, url) = (
            stop.clone(),
            failures.clone(),
            seen.clone(),
            done_tx.clone(),
            url.clone(),
        );
        tasks.spawn(async move {
            // Keep-alive connections live across reloads.
            let http = Http1::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let problem = match http.get(&format!("{url}/{t}/{i}")).await {
                    Ok(resp) if resp.status == 200 => {
                        // One request, one generation of the chain: the
                        // greeting sent upstream is the one sent back.
                        let back = resp
                            .header("x-hello-plugin")
                            .unwrap_or("<none>")
                            .to_string();
                        match echoed(&resp, "x-hello") {
                            Ok(up) if up == [back.clone()] => {
                                seen.lock().unwrap().insert(back);
                                None
                            }
                            Ok(up) => Some(format!("upstream saw {up:?}, client got {back}")),
                            Err(e) => Some(format!("{e:#}")),
                        }
                    }
                    Ok(resp) => Some(format!("{} {}", resp.status, resp.text())),
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(p) = problem {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("task {t} request {i}: {p}"));
                }
                done.send_modify(|n| *n += 1);
            }
        });
    }

    wait_load(&mut done_rx, 20).await?;
    assert_eq!(served(&gw).await?, ("g1".to_string(), None));
    // The extra plugin is added at g4 and removed again at g5.
    for gen in 2..=6u32 {
        let greeting = format!("g{gen}");
        let extra = gen == 4;
        gw.write_config(&greeting_config(echo.addr(), &greeting, extra))?;
        let (status, body) = gw.reload_admin().await?;
        ensure!(status == 200, "reload to {greeting}: {status} {body}");
        // The admin reload is synchronous: the new chain serves now.
        let want = (greeting.clone(), extra.then(|| "yes".to_string()));
        assert_eq!(served(&gw).await?, want, "after the reload to {greeting}");
        wait_load(&mut done_rx, 20).await?;
    }
    wait_load(&mut done_rx, 20).await?;
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = tasks.join_next().await {
        r?;
    }

    let failures = failures.lock().unwrap().clone();
    let total = *done_rx.borrow();
    ensure!(
        failures.is_empty(),
        "{} of {total} requests failed during plugin reloads; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(total >= 100, "only {total} requests ran during the reloads");
    let seen = seen.lock().unwrap().clone();
    ensure!(
        seen.contains("g6"),
        "the last greeting was never served under load: {seen:?}"
    );
    ensure!(
        !gw.stdout_lines()
            .iter()
            .any(|l| l.starts_with("reload failed")),
        "a reload failed:\n{}",
        gw.report()
    );
    Ok(())
}

/// The `x-hits` of a fresh request.
async fn hits(gw: &Gateway) -> Result<u64> {
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
    resp.header("x-hits")
        .context("no x-hits")?
        .parse()
        .context("x-hits is not a number")
}

#[tokio::test]
async fn kv_state_survives_a_reload() -> Result<()> {
    let echo = upstream::echo().await?;
    let with = |greeting: &str| {
        let decls = plugins::decl("counter", "kv_counter", "")
            + &plugins::decl("hello", "hello_header", "");
        config(
            echo.addr(),
            &format!(
                r#"{decls}
[[routes]]
name = "api"
upstream = "backend"
plugins = [ {{ plugin = "counter" }}, {{ plugin = "hello", config = {{ greeting = "{greeting}" }} }} ]
"#
            ),
        )
    };
    let gw = Gateway::start(&with("before")).await?;
    for want in 1..=3 {
        assert_eq!(hits(&gw).await?, want);
    }
    gw.write_config(&with("after"))?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served(&gw).await?.0, "after");
    // The probe above was the 4th request.
    assert_eq!(
        hits(&gw).await?,
        5,
        "the KV store did not survive the reload"
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_whose_plugin_cannot_start_keeps_the_old_config() -> Result<()> {
    let echo = upstream::echo().await?;
    let good = greeting_config(echo.addr(), "old", false);
    let mut gw = Gateway::start(&good).await?;
    let file = gw.config_path().display().to_string();

    // The plugin rejects its config: the error is at the chain entry.
    let rejecting = format!(
        "{}{}",
        good.replace(
            r#"plugins = [ { plugin = "hello""#,
            r#"plugins = [ { plugin = "no", config = { mode = "strict" } }, { plugin = "hello""#
        ),
        plugins::decl("no", "reject_config", "")
    );
    ensure!(
        rejecting.contains(r#"plugin = "no""#),
        "bad replacement:\n{rejecting}"
    );
    gw.skip_lines();
    gw.write_config(&rejecting)?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 400, "{body}");
    assert_located_errors(
        &body,
        &file,
        line_of(&rejecting, r#"plugin = "no""#),
        r#"reject-config says no: {"mode":"strict"}"#,
    )?;
    assert_eq!(
        gw.wait_line("reload ", T).await?,
        "reload failed generation=1"
    );
    assert_eq!(served(&gw).await?.0, "old");

    // A declared component that does not exist: the error is at its entry.
    let missing = format!(
        "{good}\n[[plugins]]\nname = \"gone\"\npath = \"{}\"\n",
        gw.dir().join("gone.wasm").display()
    );
    gw.skip_lines();
    gw.write_config(&missing)?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 400, "{body}");
    assert_located_errors(
        &body,
        &file,
        line_of(&missing, "name = \"gone\"") - 1,
        "cannot read",
    )?;
    assert_eq!(
        gw.wait_line("reload ", T).await?,
        "reload failed generation=1"
    );
    assert_eq!(served(&gw).await?.0, "old");

    // Fixed: accepted again.
    gw.write_config(&greeting_config(echo.addr(), "new", false))?;
    let (status, body) = gw.reload_admin().await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served(&gw).await?.0, "new");
    Ok(())
}

/// `plugin_instance_slots` is read at startup: a reload that changes it
/// goes through with the new routes and plugins, keeps the running engine,
/// and says so in the log.
#[tokio::test]
async fn a_reload_cannot_resize_the_instance_slots_and_says_so() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&greeting_config(echo.addr(), "g1", false)).await?;
    gw.write_config(&format!(
        "plugin_instance_slots = 16\n{}",
        greeting_config(echo.addr(), "g2", false)
    ))?;
    let (status, body) = gw.reload_admin().await?;
    ensure!(status == 200, "reload: {status} {body}");
    assert_eq!(served(&gw).await?.0, "g2");
    let line = gw
        .wait_stderr(&["plugin_instance_slots", "next restart"], T)
        .await
        .context("no warning that the setting waits for a restart")?;
    ensure!(
        line.contains("running_slots=2000"),
        "the warning does not name the running value: {line}"
    );
    Ok(())
}
