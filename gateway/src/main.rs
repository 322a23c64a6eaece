//! The `wasmgate` binary: `run` the gateway or `check` a config file.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a proxy allocates and frees
/// many small buffers per request, where glibc's malloc showed up at ~7 % of
/// CPU in profiles (see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "An API gateway with sandboxed WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "config/wasmgate.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a config file (and load its certificates) without starting.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, threads) = match cli.command {
        Some(Command::Check { file }) => {
            return match wasmgate::app::check(&file) {
                Ok(()) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Run { config, threads }) => (config, threads),
        None => (PathBuf::from("config/wasmgate.toml"), None),
    };
    let cfg = match wasmgate::config::load(&config) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    wasmgate::app::init_tracing(&cfg);
    // One thread: a current-thread runtime, which skips the work-stealing
    // machinery a single worker cannot use.
    let mut rt = match threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // Plugins without async imports run directly on the worker's stack:
    // room for the wasm stack cap (512 KiB) above the proxy's own frames.
    rt.enable_all().thread_stack_size(8 << 20);
    let result = rt
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(wasmgate::app::run(config, cfg)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
