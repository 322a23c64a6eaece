//! WebAssembly plugins on the request path: request and response mutation,
//! short-circuit answers, authentication and the per-request context, the
//! KV store under concurrency, outbound calls to configured upstreams only,
//! independent instances per config, and instance isolation modes.

use anyhow::{ensure, Context, Result};
use http::Request;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use wasmgate_e2e::client::{self, Http1, Resp};
use wasmgate_e2e::{plugins, upstream, Gateway};

pub const T: Duration = Duration::from_secs(5);

/// Admin, one listener `main`, upstream `backend` at `echo`, then
/// `rest` (plugin declarations, more upstreams, routes).
pub fn config(echo: SocketAddr, rest: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[upstreams]]
name = "backend"
endpoints = ["{echo}"]
{rest}
"#
    )
}

/// [`config`] with one route, `api`, to `backend` through the plugin
/// chain `chain` (a TOML array); `wasm` declares the plugins.
pub fn api_route(echo: SocketAddr, wasm: &str, chain: &str) -> String {
    config(
        echo,
        &format!("{wasm}\n[[routes]]\nname = \"api\"\nupstream = \"backend\"\nplugins = {chain}\n"),
    )
}

/// Like [`config`], plus an upstream `side` at `side` for plugins' outbound
/// calls.
pub fn with_side(echo: SocketAddr, side: SocketAddr, rest: &str) -> String {
    config(
        echo,
        &format!("\n[[upstreams]]\nname = \"side\"\nendpoints = [\"{side}\"]\n{rest}"),
    )
}

/// `GET url` with an `x-request-id` and extra headers, fully read.
pub async fn get(http: &Http1, url: &str, id: &str, headers: &[(&str, &str)]) -> Result<Resp> {
    let mut req = Request::get(url).header("x-request-id", id);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    http.fetch(req.body(client::empty())?).await
}

/// The values of header `name` the echo upstream saw, from its JSON answer.
pub fn echoed(resp: &Resp, name: &str) -> Result<Vec<String>> {
    let j = resp.json()?;
    Ok(j["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Whether a log line has `key=value`, quoted or not (the log formatter
/// quotes string fields but not displayed ones).
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value}")) || line.contains(&format!("{key}=\"{value}\""))
}

/// The access-log line of the request with id `id`.
pub async fn access_line(gw: &mut Gateway, id: &str) -> Result<String> {
    gw.wait_stderr(&["access", "request_id=", id, "status="], T)
        .await
}

#[tokio::test]
async fn hello_header_changes_the_request_and_the_response() -> Result<()> {
    let wasm = plugins::decl("hello", "hello_header", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[ { plugin = "hello", config = { greeting = "hi there" } } ]"#,
    );
    let mut gw = Gateway::start(&config).await?;
    let resp = get(&Http1::new(), &gw.url("main", "/x"), "hello-1", &[]).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-hello-plugin"), Some("hi there"));
    assert_eq!(echoed(&resp, "x-hello")?, ["hi there"]);
    assert_eq!(
        echo.last().context("no request")?.header("x-hello"),
        Some("hi there")
    );
    let line = access_line(&mut gw, "hello-1").await?;
    ensure!(
        line.contains("greeting=hi there"),
        "no greeting in the access log: {line}"
    );

    // Both phases ran, and were counted.
    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(m, "wasmgate_plugin_calls_total", &[("plugin", "hello")]) == Some(2.0)
    })
    .await?;
    let m = gw.admin_get("/metrics").await?.text();
    ensure!(
        crate::admin::metric(
            &m,
            "wasmgate_plugin_call_duration_seconds_count",
            &[("plugin", "hello")]
        ) == Some(2.0),
        "no call-duration histogram for hello:\n{m}"
    );
    ensure!(
        crate::admin::metric(&m, "wasmgate_plugin_instances", &[("plugin", "hello")]) >= Some(1.0),
        "no live instance of hello:\n{m}"
    );
    Ok(())
}

/// A plugin's header changes apply in order, a read in between sees those
/// before it, and the next plugin of the chain, the upstream and the client
/// see all of them.
#[tokio::test]
async fn header_changes_apply_in_order_and_reads_see_them() -> Result<()> {
    let wasm = plugins::decl("edits", "header_edits", "") + &plugins::decl("one", "header_one", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "edits", config = { request = [
      ["set", "x-a", "1"], ["append", "x-a", "2"], ["remove", "x-drop"],
      ["copy", "x-a", "x-a-seen"], ["copy", "x-drop", "x-drop-seen"],
      ["set", "x-keep", "new"], ["set", "x-late", "3"], ["append", "x-late", "4"],
    ], response = [
      ["remove", "content-type"], ["set", "x-r", "1"], ["copy", "x-r", "x-r-seen"],
      ["copy", "content-type", "x-ct-seen"],
    ] } },
  { plugin = "one", config = { read = "x-late", write = "x-late-seen" } },
]"#,
    );
    let gw = Gateway::start(&config).await?;
    let resp = get(
        &Http1::new(),
        &gw.url("main", "/x"),
        "edits-1",
        &[("x-drop", "gone"), ("x-keep", "old")],
    )
    .await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The upstream saw every change, in order.
    assert_eq!(echoed(&resp, "x-a")?, ["1", "2"]);
    assert_eq!(echoed(&resp, "x-a-seen")?, ["1", "2"]);
    assert!(echoed(&resp, "x-drop")?.is_empty());
    assert!(echoed(&resp, "x-drop-seen")?.is_empty());
    assert_eq!(echoed(&resp, "x-keep")?, ["new"]);
    assert_eq!(echoed(&resp, "x-late")?, ["3", "4"]);
    // The next plugin read the first value of a header set after the
    // read above.
    assert_eq!(echoed(&resp, "x-late-seen")?, ["3"]);
    // The response phase: the echo upstream's `content-type` removed
    // before the read, `x-r` set before it.
    assert_eq!(resp.header("x-r"), Some("1"));
    assert_eq!(resp.header("x-r-seen"), Some("1"));
    assert_eq!(resp.header("content-type"), None);
    assert_eq!(resp.header("x-ct-seen"), None);
    Ok(())
}

#[tokio::test]
async fn deny_header_short_circuits_the_chain_and_the_upstream() -> Result<()> {
    let wasm =
        plugins::decl("hello", "hello_header", "") + &plugins::decl("deny", "deny_header", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "hello", config = { greeting = "before" } },
  { plugin = "deny", config = { header = "x-block", status = 403, message = "blocked" } },
]"#,
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    let resp = get(&http, &gw.url("main", "/"), "deny-1", &[("x-block", "1")]).await?;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.text(), "blocked");
    // The answer skips every response phase, the earlier plugin's too.
    assert_eq!(resp.header("x-hello-plugin"), None);
    assert_eq!(echo.count(), 0, "a denied request reached the upstream");

    let resp = get(&http, &gw.url("main", "/"), "deny-2", &[]).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-hello-plugin"), Some("before"));
    assert_eq!(echo.count(), 1);
    Ok(())
}

#[tokio::test]
async fn key_auth_admits_known_keys_and_names_the_consumer() -> Result<()> {
    let wasm = plugins::decl("auth", "key_auth", "") + &plugins::decl("ctx", "context_echo", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "auth", config = { header = "x-api-key", keys = { k1 = "alice" } } },
  { plugin = "ctx", config = { echo = ["consumer"] } },
]"#,
    );
    let mut gw = Gateway::start(&config).await?;
    let http = Http1::new();
    let url = gw.url("main", "/private");

    for (id, headers) in [
        ("auth-none", vec![]),
        ("auth-bad", vec![("x-api-key", "k2")]),
    ] {
        let resp = get(&http, &url, id, &headers).await?;
        assert_eq!(resp.status, 401, "{id}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()?, serde_json::json!({"error": "unauthorized"}));
        assert_eq!(resp.header("x-ctx-consumer"), None);
    }
    assert_eq!(
        echo.count(),
        0,
        "an unauthenticated request reached the upstream"
    );

    let resp = get(&http, &url, "auth-ok", &[("x-api-key", "k1")]).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-ctx-consumer"), Some("alice"));
    let seen = echo.last().context("no request upstream")?;
    assert_eq!(seen.header("x-api-key"), None, "the key went upstream");
    let line = access_line(&mut gw, "auth-ok").await?;
    ensure!(
        line.contains("consumer=alice"),
        "no consumer in the access log: {line}"
    );

    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(
            m,
            "wasmgate_plugin_guest_total",
            &[("plugin", "auth"), ("name", "unauthorized")],
        ) == Some(2.0)
    })
    .await
    .context("key-auth's `unauthorized` counter is not 2")?;
    Ok(())
}

#[tokio::test]
async fn context_flows_along_the_chain_and_into_the_access_log() -> Result<()> {
    let wasm =
        plugins::decl("hello", "hello_header", "") + &plugins::decl("ctx", "context_echo", "");
    let echo = upstream::echo().await?;
    // The same plugin twice with two configs: one sets, the other reports.
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "hello", config = { greeting = "hey" } },
  { plugin = "ctx", config = { set = { tier = "gold" } } },
  { plugin = "ctx", config = { echo = ["greeting", "tier", "absent"] } },
]"#,
    );
    let mut gw = Gateway::start(&config).await?;
    let resp = get(&Http1::new(), &gw.url("main", "/"), "ctx-1", &[]).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-ctx-greeting"), Some("hey"));
    assert_eq!(resp.header("x-ctx-tier"), Some("gold"));
    assert_eq!(resp.header("x-ctx-absent"), None);
    let line = access_line(&mut gw, "ctx-1").await?;
    ensure!(
        line.contains("greeting=hey") && line.contains("tier=gold"),
        "the access log lacks the context: {line}"
    );
    Ok(())
}

#[tokio::test]
async fn rate_limit_groups_by_the_consumer_key_auth_set() -> Result<()> {
    let wasm = plugins::decl("auth", "key_auth", "") + &plugins::decl("rl", "rate_limit", "");
    let echo = upstream::echo().await?;
    // A one-day window, so that no window boundary falls inside the test.
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "auth", config = { keys = { ka = "alice", kb = "bob" } } },
  { plugin = "rl", config = { limit = 2, window_ms = 86400000, key = "consumer" } },
]"#,
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    let url = gw.url("main", "/");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let resp = get(&http, &url, &format!("rl-a{i}"), &[("x-api-key", "ka")]).await?;
        statuses.push(resp.status.as_u16());
        if i == 0 {
            assert_eq!(resp.header("x-ratelimit-remaining"), Some("1"));
        }
        if i == 2 {
            assert_eq!(resp.header("x-ratelimit-remaining"), Some("0"));
            ensure!(
                resp.header("retry-after").is_some(),
                "429 without retry-after"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    // Same client address, another consumer: its own budget. A limiter
    // that ignored the context would group both by IP and refuse bob.
    let resp = get(&http, &url, "rl-b0", &[("x-api-key", "kb")]).await?;
    assert_eq!(resp.status, 200, "bob was limited by alice's requests");
    assert_eq!(echo.count(), 3);
    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(
            m,
            "wasmgate_plugin_guest_total",
            &[("plugin", "rl"), ("name", "limited")],
        ) == Some(1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn kv_increments_are_atomic_under_concurrent_requests() -> Result<()> {
    const TASKS: usize = 8;
    const PER_TASK: usize = 25;
    let wasm = plugins::decl("counter", "kv_counter", "");
    let echo = upstream::echo().await?;
    let config = api_route(echo.addr(), &wasm, r#"[ { plugin = "counter" } ]"#);
    let gw = Gateway::start(&config).await?;
    let url = gw.url("main", "/count");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let url = url.clone();
        tasks.spawn(async move {
            let http = Http1::new();
            let mut hits = Vec::new();
            for _ in 0..PER_TASK {
                let resp = http.get(&url).await?;
                ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
                let n: u64 = resp
                    .header("x-hits")
                    .context("no x-hits")?
                    .parse()
                    .context("x-hits is not a number")?;
                hits.push(n);
            }
            Ok::<_, anyhow::Error>(hits)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    all.sort_unstable();
    let want: Vec<u64> = (1..=(TASKS * PER_TASK) as u64).collect();
    if all != want {
        let mut dups = all.clone();
        dups.dedup();
        anyhow::bail!(
            "x-hits are not exactly 1..={}: {} values, {} distinct, max {:?}",
            TASKS * PER_TASK,
            all.len(),
            dups.len(),
            all.last()
        );
    }
    Ok(())
}

#[tokio::test]
async fn outbound_calls_reach_configured_upstreams_only() -> Result<()> {
    let wasm = plugins::decl("caller", "http_caller", "");
    let echo = upstream::echo().await?;
    let side = upstream::echo().await?;
    let config = with_side(
        echo.addr(),
        side.addr(),
        &format!(
            r#"{wasm}
[[routes]]
name = "ok"
path_prefix = "/ok"
upstream = "backend"
plugins = [ {{ plugin = "caller", config = {{ upstream = "side", path = "/ping?from=plugin" }} }} ]

[[routes]]
name = "bad"
path_prefix = "/bad"
upstream = "backend"
plugins = [ {{ plugin = "caller", config = {{ upstream = "nope", path = "/ping" }} }} ]
"#
        ),
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();

    let resp = get(&http, &gw.url("main", "/ok"), "call-ok", &[]).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(echoed(&resp, "x-call-status")?, ["200"]);
    assert_eq!(side.count(), 1, "the side upstream never saw the call");
    let call = side.last().context("no call")?;
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("GET", "/ping?from=plugin")
    );

    let resp = get(&http, &gw.url("main", "/bad"), "call-bad", &[]).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let status = echoed(&resp, "x-call-status")?;
    ensure!(
        status.len() == 1 && status[0].starts_with("error:") && status[0].contains("nope"),
        "a call to an unconfigured upstream gave x-call-status {status:?}"
    );
    assert_eq!(side.count(), 1, "the call to `nope` went somewhere");
    assert_eq!(echo.count(), 2);
    Ok(())
}

/// Time a plugin spends waiting for its outbound call does not count against
/// its `cpu_limit`: a 20 ms limit and a side upstream that takes 150 ms.
#[tokio::test]
async fn waiting_for_an_outbound_call_is_not_cpu_time() -> Result<()> {
    let wasm = plugins::decl("caller", "http_caller", r#"cpu_limit = "20ms""#);
    let echo = upstream::echo().await?;
    let side = upstream::controlled("side").await?;
    side.set_mode(upstream::Mode::Slow(Duration::from_millis(150)));
    let config = with_side(
        echo.addr(),
        side.addr(),
        &format!(
            r#"{wasm}
[[routes]]
name = "slow"
upstream = "backend"
plugins = [ {{ plugin = "caller", config = {{ upstream = "side", timeout_ms = 2000 }} }} ]
"#
        ),
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for i in 0..2 {
        let resp = get(&http, &gw.url("main", "/"), &format!("slow-call-{i}"), &[]).await?;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(echoed(&resp, "x-call-status")?, ["200"]);
    }
    Ok(())
}

#[tokio::test]
async fn one_plugin_with_two_configs_on_two_routes_is_two_instances() -> Result<()> {
    let wasm = plugins::decl("hello", "hello_header", "");
    let echo = upstream::echo().await?;
    let config = config(
        echo.addr(),
        &format!(
            r#"{wasm}
[[routes]]
name = "a"
path_prefix = "/a"
upstream = "backend"
plugins = [ {{ plugin = "hello", config = {{ greeting = "a" }} }} ]

[[routes]]
name = "b"
path_prefix = "/b"
upstream = "backend"
plugins = [ {{ plugin = "hello", config = {{ greeting = "b" }} }} ]
"#
        ),
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for (i, route) in ["a", "b", "a", "b", "b", "a"].iter().enumerate() {
        let resp = get(
            &http,
            &gw.url("main", &format!("/{route}")),
            &format!("two-{i}"),
            &[],
        )
        .await?;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-hello-plugin"), Some(*route), "request {i}");
        assert_eq!(echoed(&resp, "x-hello")?, [*route], "request {i}");
    }
    Ok(())
}

#[tokio::test]
async fn global_listener_and_route_plugins_run_in_that_order() -> Result<()> {
    let wasm = plugins::decl("ctx", "context_echo", "");
    let echo = upstream::echo().await?;
    // Each level overwrites `who`; the route's reporter sees the last one.
    // A direct-response route runs the chain too.
    let config = format!(
        r#"
global_plugins = [ {{ plugin = "ctx", config = {{ set = {{ who = "global", g = "1" }} }} }} ]

[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
plugins = [ {{ plugin = "ctx", config = {{ set = {{ who = "listener", l = "1" }} }} }} ]

[[upstreams]]
name = "backend"
endpoints = ["{echo}"]
{wasm}
[[routes]]
name = "direct"
path_prefix = "/direct"
plugins = [ {{ plugin = "ctx", config = {{ echo = ["who", "g", "l"] }} }} ]
[routes.direct_response]
status = 200
body = "direct"

[[routes]]
name = "api"
upstream = "backend"
plugins = [
  {{ plugin = "ctx", config = {{ set = {{ who = "route" }} }} }},
  {{ plugin = "ctx", config = {{ echo = ["who", "g", "l"] }} }},
]
"#,
        echo = echo.addr()
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    let resp = get(&http, &gw.url("main", "/"), "order-1", &[]).await?;
    assert_eq!(resp.status, 200);
    let got: BTreeMap<&str, Option<&str>> = ["who", "g", "l"]
        .into_iter()
        .map(|k| (k, resp.header(&format!("x-ctx-{k}"))))
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([("who", Some("route")), ("g", Some("1")), ("l", Some("1"))])
    );

    let resp = get(&http, &gw.url("main", "/direct"), "order-2", &[]).await?;
    assert_eq!(
        (resp.status.as_u16(), resp.text().as_str()),
        (200, "direct")
    );
    assert_eq!(resp.header("x-ctx-who"), Some("listener"));
    assert_eq!(resp.header("x-ctx-g"), Some("1"));
    assert_eq!(echo.count(), 1);
    Ok(())
}

/// Ten sequential requests to `url`: the statuses and, for failures, the
/// error text.
async fn ten(http: &Http1, url: &str) -> Result<Vec<(u16, String)>> {
    let mut out = Vec::new();
    for _ in 0..10 {
        let resp = http.get(url).await?;
        let text = if resp.status == 200 {
            String::new()
        } else {
            resp.text()
        };
        out.push((resp.status.as_u16(), text));
    }
    Ok(out)
}

#[tokio::test]
async fn reused_instances_keep_state_and_per_request_ones_start_fresh() -> Result<()> {
    // memory-bomb with `mib = 1` keeps 1 MiB more per request in its
    // instance; under a 6 MiB cap a reused instance runs out after a few
    // requests, while a fresh instance per request never does.
    let limits = "memory_limit_bytes = 6291456";
    let wasm = plugins::decl(
        "bomb_reuse",
        "memory_bomb",
        &format!("isolation = \"reuse\"\n{limits}"),
    ) + &plugins::decl(
        "bomb_fresh",
        "memory_bomb",
        &format!("isolation = \"per-request\"\n{limits}"),
    );
    let echo = upstream::echo().await?;
    let config = config(
        echo.addr(),
        &format!(
            r#"{wasm}
[[routes]]
name = "reuse"
path_prefix = "/reuse"
upstream = "backend"
plugins = [ {{ plugin = "bomb_reuse", config = {{ mib = 1 }} }} ]

[[routes]]
name = "fresh"
path_prefix = "/fresh"
upstream = "backend"
plugins = [ {{ plugin = "bomb_fresh", config = {{ mib = 1 }} }} ]
"#
        ),
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();

    let fresh = ten(&http, &gw.url("main", "/fresh")).await?;
    ensure!(
        fresh.iter().all(|(s, _)| *s == 200),
        "per-request isolation carried state: {fresh:?}"
    );

    let reuse = ten(&http, &gw.url("main", "/reuse")).await?;
    let first_failure = reuse.iter().position(|(s, _)| *s != 200);
    let Some(n) = first_failure else {
        anyhow::bail!("10 requests kept 10 MiB in a reused instance under a 6 MiB cap: {reuse:?}");
    };
    ensure!(
        (2..=7).contains(&n),
        "the reused instance failed at request {} (want after a few MiB): {reuse:?}",
        n + 1
    );
    let (status, text) = &reuse[n];
    ensure!(
        *status == 500 && text.contains("plugin `bomb_reuse` failed (memory)"),
        "request {}: {status} {text}",
        n + 1
    );
    // The failed instance was discarded: the next one starts empty.
    ensure!(
        reuse.get(n + 1).is_some_and(|(s, _)| *s == 200),
        "no fresh instance after the failure: {reuse:?}"
    );

    let m = crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(
            m,
            "wasmgate_plugin_errors_total",
            &[("plugin", "bomb_reuse"), ("kind", "memory")],
        ) >= Some(1.0)
    })
    .await?;
    ensure!(
        crate::admin::metric(
            &m,
            "wasmgate_plugin_errors_total",
            &[("plugin", "bomb_fresh")]
        )
        .unwrap_or(0.0)
            == 0.0,
        "the per-request plugin failed:\n{m}"
    );
    let passed = reuse.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        echo.count(),
        10 + passed,
        "a failed request reached the upstream"
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_is_called_only_in_the_phases_it_declares() -> Result<()> {
    // header-one declares the request-headers phase only; hello-header both.
    let wasm = plugins::decl("one", "header_one", "") + &plugins::decl("hello", "hello_header", "");
    let echo = upstream::echo().await?;
    let config = api_route(
        echo.addr(),
        &wasm,
        r#"[
  { plugin = "one" },
  { plugin = "hello", config = { greeting = "hi" } },
]"#,
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for i in 0..3 {
        let resp = get(
            &http,
            &gw.url("main", "/x"),
            &format!("phases-{i}"),
            &[("x-bench-in", "v")],
        )
        .await?;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(echoed(&resp, "x-bench-out")?, ["v"]);
        assert_eq!(resp.header("x-hello-plugin"), Some("hi"));
    }
    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(m, "wasmgate_plugin_calls_total", &[("plugin", "hello")]) == Some(6.0)
    })
    .await?;
    let m = gw.admin_get("/metrics").await?.text();
    ensure!(
        crate::admin::metric(&m, "wasmgate_plugin_calls_total", &[("plugin", "one")]) == Some(3.0),
        "header-one was called outside its declared phase:\n{m}"
    );
    Ok(())
}
