#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, end-to-end tests,
# config golden tests and the plugin SDK's tests. Installs what it needs on
# a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The plugins (plugins/, a workspace of its own) build for WebAssembly.
rustup target add wasm32-wasip2

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== plugins: cargo fmt --check, cargo clippy"
(cd plugins && cargo fmt --all -- --check && cargo clippy --release --target wasm32-wasip2 -- -D warnings)
echo "== cargo test"
cargo build -p wasmgate --bin wasmgate
# Built here so that no single end-to-end test pays for the build (the
# harness builds them on first use otherwise; then this is a no-op).
(cd plugins && cargo build --release --target wasm32-wasip2)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace -- --test-threads=2 2>&1 | tee "$log"
echo "== plugins: SDK unit and doc tests (native)"
(cd plugins && cargo test -p wasmgate-plugin-sdk -- --test-threads=2) 2>&1 | tee -a "$log"
# One closing line for the whole run (cargo prints one per test binary,
# ending with the doc tests, which may be empty).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
