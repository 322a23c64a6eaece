//! Plugins that cannot start make the config invalid: `wasmgate check`
//! exits 2 with a located error (the plugin's own message for a rejected
//! config), and `wasmgate run` refuses to start. Golden cases for these are
//! in `config/invalid/plugin_*.toml` and `unknown_plugin.toml`.

use crate::reload::line_of;
use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;
use wasmgate_e2e::gateway::check;
use wasmgate_e2e::{plugins, Gateway};

/// A config with a `[[plugins]]` entry `p` at `path` (a TOML string) and a
/// direct-response route `api` whose chain is `p` with `plugin_config`.
fn with_plugin(path: &str, decl_extra: &str, plugin_config: &str) -> String {
    format!(
        r#"[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[plugins]]
name = "p"
path = {path}
{decl_extra}

[[routes]]
name = "api"
plugins = [ {{ plugin = "p", config = {plugin_config} }} ]
[routes.direct_response]
status = 200
"#
    )
}

/// Runs `wasmgate check config.toml` on `toml` in a temp dir; expects exit
/// status 2 and an error `config.toml:LINE:COL: …` at `line` containing
/// `needle`.
async fn check_fails(dir: &Path, toml: &str, line: usize, needle: &str) -> Result<()> {
    std::fs::write(dir.join("config.toml"), toml)?;
    let out = check(dir, "config.toml").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "check exited with {:?}, wanted 2; stderr:\n{stderr}",
        out.status
    );
    let at = format!("config.toml:{line}:");
    ensure!(
        stderr.lines().any(|l| {
            l.strip_prefix(&at)
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(col, _)| col.parse::<usize>().is_ok())
                && l.contains(needle)
        }),
        "no `{at}COL: …{needle}…` error; stderr:\n{stderr}"
    );
    Ok(())
}

/// Writes `toml` as the config and checks that `wasmgate check` accepts it.
async fn check_passes(dir: &Path, toml: &str, what: &str) -> Result<()> {
    std::fs::write(dir.join("config.toml"), toml)?;
    let out = check(dir, "config.toml").await?;
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn check_rejects_plugins_that_cannot_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let chain_line = |toml: &str| line_of(toml, "plugins = [");
    let entry_line = |toml: &str| line_of(toml, "[[plugins]]");

    // The plugin's own message, with the config it was given, at the chain entry.
    let toml = with_plugin(
        &plugins::toml_path("reject_config"),
        "",
        r#"{ mode = "strict" }"#,
    );
    check_fails(
        dir,
        &toml,
        chain_line(&toml),
        r#"route `api`: plugin `p` failed to start: plugin rejected its config: reject-config says no: {"mode":"strict"}"#,
    )
    .await?;

    // A config the plugin's schema refuses (key-auth wants `keys`).
    let toml = with_plugin(
        &plugins::toml_path("key_auth"),
        "",
        r#"{ header = "x-key" }"#,
    );
    check_fails(dir, &toml, chain_line(&toml), "missing field `keys`").await?;

    // Traps and spins in `configure` are config errors too, not hangs.
    let toml = with_plugin(
        &plugins::toml_path("trap"),
        "",
        r#"{ phase = "configure" }"#,
    );
    check_fails(dir, &toml, chain_line(&toml), "plugin `p` failed to start").await?;
    let toml = with_plugin(
        &plugins::toml_path("spin"),
        r#"cpu_limit = "20ms""#,
        r#"{ phase = "configure" }"#,
    );
    check_fails(dir, &toml, chain_line(&toml), "deadline").await?;

    // No file, or not a component: at the [[plugins]] entry.
    let toml = with_plugin(&plugins::toml_str(&dir.join("missing.wasm")), "", "{}");
    check_fails(dir, &toml, entry_line(&toml), "cannot read").await?;
    std::fs::write(dir.join("junk.wasm"), b"\0asm but not really")?;
    let toml = with_plugin(&plugins::toml_str(&dir.join("junk.wasm")), "", "{}");
    check_fails(dir, &toml, entry_line(&toml), "is not a loadable component").await?;

    // A relative path is relative to the config file's directory.
    std::fs::copy(plugins::path("hello_header"), dir.join("rel.wasm"))?;
    let toml = with_plugin("\"rel.wasm\"", "", r#"{ greeting = "hi" }"#);
    check_passes(dir, &toml, "a good relative plugin path").await
}

#[tokio::test]
async fn run_refuses_to_start_when_a_plugin_rejects_its_config() -> Result<()> {
    let toml = with_plugin(&plugins::toml_path("reject_config"), "", "{ n = 1 }");
    let mut gw = Gateway::spawn(&toml, &[]).await?;
    let status = gw.wait_exit(Duration::from_secs(10)).await?;
    ensure!(
        !status.success(),
        "wasmgate run started with a rejecting plugin"
    );
    ensure!(
        !gw.stdout_lines().iter().any(|l| l == "ready"),
        "printed ready with a rejecting plugin"
    );
    let want = format!(
        "{}:{}:",
        gw.config_path().display(),
        line_of(&toml, "plugins = [")
    );
    ensure!(
        gw.stderr()
            .lines()
            .any(|l| l.contains(&want) && l.contains(r#"reject-config says no: {"n":1}"#)),
        "stderr has no `{want}…reject-config says no` error:\n{}",
        gw.stderr()
    );
    Ok(())
}

#[tokio::test]
async fn more_plugin_instances_than_slots_fail_the_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    // One slot, two pools (one plugin, two configs): the second cannot get
    // its first instance.
    let one = with_plugin(
        &plugins::toml_path("hello_header"),
        "",
        r#"{ greeting = "a" }"#,
    );
    let two = format!(
        r#"plugin_instance_slots = 1
{one}
[[routes]]
name = "b"
path_prefix = "/b"
plugins = [ {{ plugin = "p", config = {{ greeting = "b" }} }} ]
[routes.direct_response]
status = 200
"#
    );
    let line = line_of(&two, r#"config = { greeting = "b" }"#);
    check_fails(dir, &two, line, "plugin_instance_slots").await?;

    // A bad value is reported where it is.
    let bad = format!("plugin_instance_slots = 0\n{one}");
    check_fails(dir, &bad, 1, "must be at least 1").await?;
    let bad = format!("plugin_instance_slots = 100000\n{one}");
    check_fails(dir, &bad, 1, "is above 10000").await?;

    // Enough slots: fine.
    let enough = two.replace("slots = 1", "slots = 2");
    check_passes(dir, &enough, "two slots for two pools").await
}
