//! Golden tests for `wasmgate check`: every `tests/config/invalid/*.toml`
//! must fail with exactly the stderr in the matching `.err` file.
//!
//! `check` runs with the current directory set to `tests/config/invalid`
//! and a relative file name, so the paths in the messages are stable.
//! Run with `UPDATE_GOLDEN=1` to rewrite the `.err` files from the binary's
//! current output (then review the diff).
//!
//! Independently of the golden text, each `.toml` carries hand-written
//! `# expect: LINE[-LINE]: text` comments: an error must be reported on that
//! line (range) and mention that text, so a golden file generated from a
//! wrong binary cannot hide a wrongly located error.
//!
//! Plugin cases name components by relative path under
//! `plugins/target/wasm32-wasip2/release/`, so the plugins are built first.

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use wasmgate_e2e::gateway::{check, workspace};
use wasmgate_e2e::plugins;

fn invalid_dir() -> PathBuf {
    workspace().join("tests").join("config").join("invalid")
}

/// `(first line, last line, text)` from the case's `# expect:` comments.
fn expectations(toml: &str) -> Result<Vec<(usize, usize, String)>> {
    toml.lines()
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|rest| {
            let (lines, text) = rest
                .trim_start()
                .split_once(':')
                .context("expect: LINE: text")?;
            let (a, b) = lines.split_once('-').unwrap_or((lines, lines));
            Ok((
                a.trim().parse()?,
                b.trim().parse()?,
                text.trim().to_string(),
            ))
        })
        .collect()
}

/// Trailing whitespace removed from each line, one final newline.
fn normalise(s: &str) -> String {
    let text = wasmgate_e2e::strip_ansi(s);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let mut out = lines.join("\n").trim_end().to_string();
    out.push('\n');
    out
}

/// `Some((line, col))` if `error` has the shape `FILE:LINE:COL: message — fix`.
fn location(file: &str, error: &str) -> Option<(usize, usize)> {
    let rest = error.strip_prefix(file)?.strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let col = parts.next()?.parse().ok()?;
    let text = parts.next()?.strip_prefix(' ')?;
    let (message, fix) = text.split_once(" — ")?;
    (!message.trim().is_empty() && !fix.trim().is_empty()).then_some((line, col))
}

async fn check_case(dir: &Path, toml_path: &Path, update: bool) -> Result<Vec<String>> {
    let file = toml_path
        .file_name()
        .and_then(|f| f.to_str())
        .context("bad case file name")?
        .to_string();
    let mut problems = Vec::new();
    let out = check(dir, &file).await?;
    let stderr = normalise(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        problems.push(format!(
            "{file}: `wasmgate check` exited 0; stderr:\n{stderr}"
        ));
        return Ok(problems);
    }

    let errors: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    if errors.is_empty() {
        problems.push(format!("{file}: failed without printing an error"));
    }
    let mut located = Vec::new();
    for e in &errors {
        match location(&file, e) {
            Some(loc) => located.push((loc.0, *e)),
            None => problems.push(format!(
                "{file}: stderr line is not `{file}:LINE:COL: message — fix`: {e:?}"
            )),
        }
    }
    let source = std::fs::read_to_string(toml_path)?;
    for (from, to, text) in expectations(&source)? {
        let hit = located.iter().any(|(line, e)| {
            (from..=to).contains(line) && e.to_lowercase().contains(&text.to_lowercase())
        });
        if !hit {
            problems.push(format!(
                "{file}: no error on line {from}-{to} mentioning {text:?}; got:\n{stderr}"
            ));
        }
    }

    let golden = toml_path.with_extension("err");
    if update {
        std::fs::write(&golden, &stderr)?;
    } else {
        match std::fs::read_to_string(&golden) {
            Ok(want) if normalise(&want) == stderr => {}
            Ok(want) => problems.push(format!(
                "{file}: stderr differs from {}\n--- expected\n{want}--- actual\n{stderr}",
                golden.display()
            )),
            Err(_) => problems.push(format!(
                "{file}: no {} (run with UPDATE_GOLDEN=1); actual stderr:\n{stderr}",
                golden.display()
            )),
        }
    }
    Ok(problems)
}

#[tokio::test]
async fn invalid_configs_match_their_golden_errors() -> Result<()> {
    let dir = invalid_dir();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // The plugin cases refer to built components.
    plugins::path_async("reject_config").await;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    cases.sort();
    ensure!(cases.len() >= 13, "only {} golden cases found", cases.len());

    let mut problems = Vec::new();
    for case in &cases {
        problems.extend(check_case(&dir, case, update).await?);
    }
    ensure!(
        problems.is_empty(),
        "{} golden problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    Ok(())
}

#[tokio::test]
async fn multiple_errors_are_all_reported_at_once() -> Result<()> {
    let out = check(&invalid_dir(), "multiple_errors.toml").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "expected three errors:\n{stderr}");
    assert!(!out.status.success());
    Ok(())
}

#[tokio::test]
async fn bundled_example_config_is_valid() -> Result<()> {
    let out = check(&workspace(), "config/wasmgate.toml").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check config/wasmgate.toml failed:\n{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    Ok(())
}
