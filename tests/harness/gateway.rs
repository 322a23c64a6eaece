//! The `wasmgate` binary under test: built once per test process, started
//! with a config in a temp dir, observed through its stdout protocol.
//!
//! Stdout lines (`listening …`, `admin …`, `ready`, `reload ok …`,
//! `draining`, `stopped`) are collected by a background task; tests wait for
//! them with [`Gateway::wait_line`] instead of sleeping. Stderr (the logs) is
//! captured so tests can look for access-log lines and so a failed start
//! can show what the gateway said. Set `WASMGATE_E2E_STDERR=1` to also copy
//! the gateway's stderr to the test's stderr as it arrives.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a gateway may take from spawn to `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the `wasmgate` binary, built on first use.
///
/// `WASMGATE_BIN` skips the build and uses the given binary.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WASMGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build).clone().map_err(|e| anyhow!(e))
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn build() -> Result<PathBuf, String> {
    let ws = workspace();
    let mut cmd = cargo_command(&ws);
    cmd.args(["build", "-p", "wasmgate", "--bin", "wasmgate"]);
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p wasmgate --bin wasmgate` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => ws.join(t),
        None => ws.join("target"),
    };
    let bin = target
        .join("debug")
        .join(format!("wasmgate{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        return Err(format!(
            "built wasmgate but {} does not exist",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A `cargo` command (the cargo running the tests, if any) to run in `dir`,
/// without the variables cargo sets for the running test.
///
/// Those would leak into the nested build; build scripts that watch them
/// (ring watches CARGO_MANIFEST_DIR) would then rebuild on every
/// alternation between the nested build and the test's own.
pub(crate) fn cargo_command(dir: &Path) -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_for_crate = matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        ) || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_");
        if set_for_crate {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Builds the binary without blocking the async runtime.
async fn binary_async() -> Result<PathBuf> {
    tokio::task::spawn_blocking(binary).await?
}

/// Runs `wasmgate check FILE` in `cwd`, as a user would.
pub async fn check(cwd: &Path, file: &str) -> Result<std::process::Output> {
    let bin = binary_async().await?;
    let out = Command::new(bin)
        .args(["check", file])
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await?;
    Ok(out)
}

/// Lines of a child's stdout, with a version counter to wait on.
#[derive(Default)]
struct Stdout {
    lines: Mutex<Vec<String>>,
}

/// Bytes of a child's stderr.
#[derive(Default)]
struct Stderr {
    bytes: Mutex<Vec<u8>>,
}

/// A running `wasmgate run` process. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    pid: u32,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stdout: Arc<Stdout>,
    /// Bumped on every stdout line and at EOF (then `true`).
    stdout_rx: watch::Receiver<(usize, bool)>,
    stderr: Arc<Stderr>,
    /// Bumped on every stderr chunk and at EOF (then `true`).
    stderr_rx: watch::Receiver<(usize, bool)>,
    /// Index of the first stdout line not yet consumed by `wait_line`.
    cursor: usize,
}

impl Gateway {
    /// Writes `toml` to a temp dir, runs `wasmgate run --config FILE` and
    /// waits for `ready`.
    pub async fn start(toml: &str) -> Result<Gateway> {
        Self::start_with_args(toml, &[]).await
    }

    /// [`Gateway::start`] with extra command-line arguments after `--config FILE`.
    pub async fn start_with_args(toml: &str, args: &[&str]) -> Result<Gateway> {
        let mut gw = Self::spawn(toml, args).await?;
        gw.wait_ready().await?;
        Ok(gw)
    }

    /// Starts `wasmgate run` without waiting for `ready` (for tests of a
    /// start that must fail). [`Gateway::wait_ready`] completes the start.
    pub async fn spawn(toml: &str, args: &[&str]) -> Result<Gateway> {
        let bin = binary_async().await?;
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, toml)?;

        let mut child = Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("child has no pid")?;

        let stdout = Arc::new(Stdout::default());
        let (out_tx, stdout_rx) = watch::channel((0, false));
        let pipe = child.stdout.take().context("no stdout pipe")?;
        tokio::spawn(read_stdout(pipe, stdout.clone(), out_tx));

        let stderr = Arc::new(Stderr::default());
        let (err_tx, stderr_rx) = watch::channel((0, false));
        let pipe = child.stderr.take().context("no stderr pipe")?;
        tokio::spawn(read_stderr(pipe, stderr.clone(), err_tx));

        Ok(Gateway {
            child,
            pid,
            dir,
            config_path,
            listeners: HashMap::new(),
            admin: None,
            stdout,
            stdout_rx,
            stderr,
            stderr_rx,
            cursor: 0,
        })
    }

    /// Waits for `ready` and learns the listener and admin addresses from
    /// the lines before it.
    pub async fn wait_ready(&mut self) -> Result<()> {
        self.wait_line("ready", START_TIMEOUT)
            .await
            .context("gateway did not become ready")?;
        for line in self.stdout_lines() {
            if let Some(rest) = line.strip_prefix("listening ") {
                let name = field(rest, "listener")
                    .with_context(|| format!("bad listening line `{line}`"))?;
                let addr = field(rest, "addr")
                    .and_then(|a| a.parse().ok())
                    .with_context(|| format!("bad listening line `{line}`"))?;
                self.listeners.insert(name.to_string(), addr);
            } else if let Some(rest) = line.strip_prefix("admin ") {
                let addr = field(rest, "addr")
                    .and_then(|a| a.parse().ok())
                    .with_context(|| format!("bad admin line `{line}`"))?;
                self.admin = Some(addr);
            }
        }
        Ok(())
    }

    /// The bound address of listener `name` (from its `listening` line).
    pub fn addr(&self, name: &str) -> SocketAddr {
        match self.listeners.get(name) {
            Some(a) => *a,
            None => panic!(
                "no `listening listener={name}` line; stdout was:\n{}",
                self.stdout_lines().join("\n")
            ),
        }
    }

    /// The admin listener's address (from its `admin` line).
    pub fn admin(&self) -> SocketAddr {
        match self.admin {
            Some(a) => a,
            None => panic!(
                "no `admin addr=` line; stdout was:\n{}",
                self.stdout_lines().join("\n")
            ),
        }
    }

    /// `http://<listener addr><path>`.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin(), path)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temp dir holding the config (certificates may be put here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file atomically: write a sibling, then rename.
    pub fn write_config(&self, toml: &str) -> Result<()> {
        let tmp = self.dir.path().join(".config.toml.tmp");
        std::fs::write(&tmp, toml)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// `POST /reload` on the admin listener.
    pub async fn reload_admin(&self) -> Result<(http::StatusCode, String)> {
        let resp = crate::client::Http1::new()
            .send(http::Request::post(self.admin_url("/reload")).body(crate::client::empty())?)
            .await?;
        let resp = crate::client::read(resp).await?;
        Ok((resp.status, resp.text()))
    }

    /// `GET <path>` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Result<crate::client::Resp> {
        crate::client::Http1::new().get(&self.admin_url(path)).await
    }

    pub fn sighup(&self) -> Result<()> {
        self.signal("HUP")
    }

    pub fn sigterm(&self) -> Result<()> {
        self.signal("TERM")
    }

    pub fn sigint(&self) -> Result<()> {
        self.signal("INT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines.lock().unwrap().clone()
    }

    /// Marks every stdout line so far as seen: later `wait_line` calls only
    /// match lines printed after this point.
    pub fn skip_lines(&mut self) {
        self.cursor = self.stdout.lines.lock().unwrap().len();
    }

    /// Waits for the next stdout line (after the last one returned by this
    /// method) that starts with `prefix`, and returns it.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, eof) = *self.stdout_rx.borrow_and_update();
            {
                let lines = self.stdout.lines.lock().unwrap();
                if let Some(i) = lines[self.cursor..]
                    .iter()
                    .position(|l| l.starts_with(prefix))
                {
                    let i = self.cursor + i;
                    self.cursor = i + 1;
                    return Ok(lines[i].clone());
                }
            }
            if eof {
                bail!(
                    "stdout closed before a line starting with `{prefix}`\n{}",
                    self.report()
                );
            }
            match tokio::time::timeout_at(deadline, self.stdout_rx.changed()).await {
                Ok(_) => {}
                Err(_) => bail!(
                    "no stdout line starting with `{prefix}` within {timeout:?}\n{}",
                    self.report()
                ),
            }
        }
    }

    /// Waits until stderr (ANSI-stripped) has a line containing every one
    /// of `needles`, and returns that line.
    pub async fn wait_stderr(&mut self, needles: &[&str], timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, eof) = *self.stderr_rx.borrow_and_update();
            if let Some(line) = self
                .stderr()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Ok(line.to_string());
            }
            if eof {
                bail!(
                    "stderr closed without a line containing {needles:?}\n{}",
                    self.report()
                );
            }
            if tokio::time::timeout_at(deadline, self.stderr_rx.changed())
                .await
                .is_err()
            {
                bail!(
                    "no stderr line containing {needles:?} within {timeout:?}\n{}",
                    self.report()
                );
            }
        }
    }

    /// Everything the gateway wrote to stderr so far, ANSI-stripped.
    pub fn stderr(&self) -> String {
        let bytes = self.stderr.bytes.lock().unwrap();
        crate::strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// Stdout and the tail of stderr, for failure messages.
    pub fn report(&self) -> String {
        let err = self.stderr();
        let tail: Vec<&str> = err.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- wasmgate stdout ---\n{}\n--- wasmgate stderr (last 60 lines) ---\n{}",
            self.stdout_lines().join("\n"),
            tail.join("\n")
        )
    }

    /// Waits for the process to exit and for its stdout and stderr to be
    /// read to the end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let (out, err) = (&mut self.stdout_rx, &mut self.stderr_rx);
        let all = async {
            let status = self.child.wait().await;
            let _ = out.wait_for(|(_, eof)| *eof).await;
            let _ = err.wait_for(|(_, eof)| *eof).await;
            status
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "wasmgate did not exit within {timeout:?}\n{}",
                self.report()
            ),
        }
    }

    /// Resident set size of the gateway process, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.proc_status_bytes("VmRSS:")
    }

    /// The peak resident set size of the gateway process so far (VmHWM),
    /// in bytes: shows memory that was used and given back between two
    /// samples.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        self.proc_status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes.
    fn proc_status_bytes(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("malformed {field} line"))?
            .parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        let _ = self.child.start_kill();
    }
}

/// `key=value` out of a space-separated line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn read_stdout(
    pipe: tokio::process::ChildStdout,
    out: Arc<Stdout>,
    tx: watch::Sender<(usize, bool)>,
) {
    let mut lines = BufReader::new(pipe).lines();
    let mut n = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        out.lines.lock().unwrap().push(line);
        n += 1;
        tx.send_replace((n, false));
    }
    tx.send_replace((n, true));
}

async fn read_stderr(
    mut pipe: tokio::process::ChildStderr,
    err: Arc<Stderr>,
    tx: watch::Sender<(usize, bool)>,
) {
    let tee = std::env::var_os("WASMGATE_E2E_STDERR").is_some();
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0;
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                if tee {
                    eprint!("{}", String::from_utf8_lossy(&buf[..k]));
                }
                err.bytes.lock().unwrap().extend_from_slice(&buf[..k]);
                n += k;
                tx.send_replace((n, false));
            }
        }
    }
    tx.send_replace((n, true));
}
