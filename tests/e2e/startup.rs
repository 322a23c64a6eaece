//! Starting up: the stdout readiness protocol, `--threads`, and refusing
//! to start on a bad config or an address already in use.

use anyhow::{ensure, Result};
use std::time::Duration;
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn readiness_lines_name_every_listener_with_its_real_port() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "one"
address = "127.0.0.1:0"
[[listeners]]
name = "two"
address = "127.0.0.1:0"
[[upstreams]]
name = "echo"
endpoints = ["{}"]
[[routes]]
name = "api"
upstream = "echo"
"#,
        echo.addr()
    );
    let gw = Gateway::start(&config).await?;
    let lines = gw.stdout_lines();
    let ready = lines.iter().position(|l| l == "ready");
    for prefix in [
        "listening listener=one ",
        "listening listener=two ",
        "admin addr=",
    ] {
        let at = lines.iter().position(|l| l.starts_with(prefix));
        ensure!(
            at.is_some() && at < ready,
            "no `{prefix}…` line before `ready`: {lines:?}"
        );
    }
    let (one, two) = (gw.addr("one"), gw.addr("two"));
    ensure!(
        one.port() != 0 && two.port() != 0 && one != two,
        "{one} {two}"
    );
    // The printed addresses are the ones serving.
    let http = Http1::new();
    assert_eq!(http.get(&gw.url("one", "/")).await?.status, 200);
    assert_eq!(http.get(&gw.url("two", "/")).await?.status, 200);
    assert_eq!(http.get(&gw.admin_url("/healthz")).await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn runs_with_one_worker_thread() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start_with_args(&conf::simple(echo.addr()), &["--threads", "1"]).await?;
    let http = Http1::new();
    for _ in 0..5 {
        assert_eq!(http.get(&gw.url("main", "/")).await?.status, 200);
    }
    Ok(())
}

#[tokio::test]
async fn invalid_config_refuses_to_start_with_located_errors() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = conf::simple(echo.addr()).replace("upstream = \"backend\"", "upstream = \"nope\"");
    let line = config
        .lines()
        .position(|l| l.contains("\"nope\""))
        .map_or(0, |i| i + 1);
    let mut gw = Gateway::spawn(&config, &[]).await?;
    let status = gw.wait_exit(T).await?;
    ensure!(
        !status.success(),
        "wasmgate run started with a broken config"
    );
    ensure!(
        !gw.stdout_lines().iter().any(|l| l == "ready"),
        "printed ready with a broken config"
    );
    let want = format!("{}:{line}:", gw.config_path().display());
    ensure!(
        gw.stderr()
            .lines()
            .any(|l| l.contains(&want) && l.contains("nope")),
        "stderr has no `{want}…nope` error:\n{}",
        gw.stderr()
    );
    Ok(())
}

#[tokio::test]
async fn address_in_use_refuses_to_start() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let echo = upstream::echo().await?;
    let config = conf::simple(echo.addr()).replace(
        "name = \"main\"\naddress = \"127.0.0.1:0\"",
        &format!("name = \"main\"\naddress = \"{}\"", taken.local_addr()?),
    );
    let mut gw = Gateway::spawn(&config, &[]).await?;
    let status = gw.wait_exit(T).await?;
    ensure!(!status.success(), "started on an address that is in use");
    ensure!(
        !gw.stdout_lines().iter().any(|l| l == "ready"),
        "printed ready without its listener"
    );
    ensure!(
        gw.stderr().contains(&taken.local_addr()?.to_string()),
        "the error does not name the address:\n{}",
        gw.stderr()
    );
    Ok(())
}
