//! The WebAssembly plugins of `<workspace>/plugins`, built once per test
//! process (`cargo build --release --target wasm32-wasip2` in that
//! workspace) and handed to tests as file paths for `[[plugins]]` entries.
//!
//! `WASMGATE_PLUGINS=/dir` skips the build and takes `<name>.wasm` from that
//! directory instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The plugins' own Cargo workspace.
pub fn workspace() -> PathBuf {
    crate::gateway::workspace().join("plugins")
}

/// The directory holding the built components, after building them on the
/// first call in this process. Panics with cargo's stderr if the build fails.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WASMGATE_PLUGINS") {
        return PathBuf::from(d);
    }
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build) {
        Ok(d) => d.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The built component `name` (crate name with `_` for `-`), e.g.
/// `path("hello_header")` → `<workspace>/plugins/target/wasm32-wasip2/release/hello_header.wasm`.
/// The first call in a test process builds every plugin.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "no plugin component {} (is `{name}` a crate in plugins/?)",
        p.display()
    );
    p
}

/// [`path`] as a quoted TOML string, for `path = …` in a `[[plugins]]` entry.
pub fn toml_path(name: &str) -> String {
    toml_str(&path(name))
}

/// [`path`] without blocking the async runtime (the first call may build
/// for a minute or two).
pub async fn path_async(name: &str) -> PathBuf {
    let name = name.to_string();
    match tokio::task::spawn_blocking(move || path(&name)).await {
        Ok(p) => p,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A `[[plugins]]` entry named `name` for the component `wasm`, with extra
/// `key = value` lines (limits, isolation, failure policy).
pub fn decl(name: &str, wasm: &str, extra: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\npath = {}\n{extra}\n",
        toml_path(wasm)
    )
}

/// `path` as a TOML basic string.
pub fn toml_str(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn build() -> Result<PathBuf, String> {
    let ws = workspace();
    let mut cmd = crate::gateway::cargo_command(&ws);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo in {}: {e}", ws.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release --target wasm32-wasip2` in {} failed ({}); \
             is the target installed (`rustup target add wasm32-wasip2`)?\n{}",
            ws.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // A relative CARGO_TARGET_DIR is relative to where cargo ran.
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => ws.join(t),
        None => ws.join("target"),
    };
    Ok(target.join("wasm32-wasip2").join("release"))
}
