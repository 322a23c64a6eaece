//! The test harness plugin authors use (`wasmgate::plugin::testing`):
//! a plugin loaded, configured and run without a gateway.

use anyhow::Result;
use http::Method;
use std::time::Duration;
use wasmgate::plugin::testing::{TestPlugin, TestRequest};
use wasmgate::plugin::{Isolation, PluginLimits};
use wasmgate_e2e::plugins;

#[tokio::test]
async fn harness_runs_both_phases_and_reports_the_plugins_effects() -> Result<()> {
    let hello = TestPlugin::load(plugins::path("hello_header"), r#"{"greeting":"hi"}"#)
        .await
        .map_err(anyhow::Error::msg)?;
    let run = hello
        .on_request(TestRequest::get("/x").header("x-a", "1"))
        .await;
    assert!(run.reply.is_none());
    assert_eq!(run.request.headers["x-hello"], "hi");
    assert_eq!(run.request.context["greeting"], "hi");
    let resp = hello.on_response(200, &[], &[]).await?;
    assert_eq!(resp.response.headers["x-hello-plugin"], "hi");
    Ok(())
}

/// Plugins are entered directly on the worker thread, the cheap path,
/// unless they import an async host function: the SDK's plugins (with
/// `std` and its stdio) are direct; one that makes HTTP calls needs a
/// fiber, and still works (tests/e2e/plugins.rs calls out through it).
#[tokio::test]
async fn plugins_without_async_imports_are_called_directly() -> Result<()> {
    for (name, config) in [
        ("hello_header", r#"{"greeting":"hi"}"#),
        ("noop", "{}"),
        ("trap", "{}"),
        ("key_auth", r#"{"keys":{"k":"c"}}"#),
    ] {
        let p = TestPlugin::load(plugins::path(name), config)
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(p.called_directly(), "{name} is entered on a fiber");
    }
    let caller = TestPlugin::load(plugins::path("http_caller"), r#"{"upstream":"side"}"#)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(!caller.called_directly(), "http_caller imports http-call");
    Ok(())
}

#[tokio::test]
async fn harness_runs_body_phases() -> Result<()> {
    let config = r#"{"request":[{"from":"a","to":"b"}],"deny_request_containing":"evil"}"#;
    let rewrite = TestPlugin::load(plugins::path("body_rewrite"), config)
        .await
        .map_err(anyhow::Error::msg)?;
    // Only the request body was asked for, as the config has no response
    // rules; no head phase either.
    let phases = rewrite.phases();
    assert!(phases.request_body && !phases.response_body, "{phases:?}");
    assert!(
        !phases.request_headers && !phases.response_headers,
        "{phases:?}"
    );
    let run = rewrite
        .on_request_body(TestRequest::new(Method::POST, "/"), b"banana")
        .await?;
    assert!(run.reply.is_none());
    assert_eq!(run.body.as_deref(), Some(&b"bbnbnb"[..]));
    let run = rewrite
        .on_request_body(TestRequest::new(Method::POST, "/"), b"evil")
        .await?;
    assert_eq!(run.reply.map(|r| r.status.as_u16()), Some(400));
    // Unchanged bodies come back as `None`: nothing to replace.
    let run = rewrite
        .on_request_body(TestRequest::new(Method::POST, "/"), b"xyz")
        .await?;
    assert!(run.body.is_none() && run.reply.is_none());

    let config = r#"{"response":[{"from":"x","to":"y"}]}"#;
    let rewrite = TestPlugin::load(plugins::path("body_rewrite"), config)
        .await
        .map_err(anyhow::Error::msg)?;
    let run = rewrite.on_response_body(200, &[], b"xx").await?;
    assert_eq!(run.body.as_deref(), Some(&b"yy"[..]));
    assert_eq!(run.response.headers["x-body-rewrites"], "2");
    Ok(())
}

#[tokio::test]
async fn harness_reports_config_rejection_short_circuits_and_traps() -> Result<()> {
    let err = TestPlugin::load(plugins::path("hello_header"), "{}")
        .await
        .err();
    assert!(
        err.is_some_and(|e| e.contains("greeting")),
        "missing greeting accepted"
    );

    let deny = TestPlugin::load(
        plugins::path("deny_header"),
        r#"{"header":"x-block","status":403}"#,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let run = deny
        .on_request(TestRequest::get("/").header("x-block", "1"))
        .await;
    assert_eq!(run.reply.map(|r| r.status.as_u16()), Some(403));

    let trap = TestPlugin::load(plugins::path("trap"), "{}")
        .await
        .map_err(anyhow::Error::msg)?;
    let failed = trap.try_on_request(TestRequest::get("/")).await.err();
    assert_eq!(failed.map(|e| e.kind()), Some("unreachable"));
    Ok(())
}

#[tokio::test]
async fn one_instance_outlives_the_component_store_handle_limit() -> Result<()> {
    // wasmtime caps live handles per store at 100,000; lending the request
    // to the guest must not leave one behind per call, or a reused instance
    // traps after that many calls.
    let limits = PluginLimits {
        cpu: Duration::from_secs(1),
        max_instance_uses: u64::MAX,
        ..PluginLimits::default()
    };
    let plugin = TestPlugin::load_with(plugins::path("header_one"), "{}", limits, Isolation::Reuse)
        .await
        .map_err(anyhow::Error::msg)?;
    for i in 0..101_000 {
        if let Err(e) = plugin.try_on_request(TestRequest::get("/")).await {
            anyhow::bail!("request phase {i} failed: {e}");
        }
        if let Err(e) = plugin.on_response(200, &[], &[]).await {
            anyhow::bail!("response phase {i} failed: {e}");
        }
    }
    Ok(())
}
