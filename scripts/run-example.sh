#!/usr/bin/env bash
# Runs wasmgate on config/wasmgate.toml, with a small static file server on
# 127.0.0.1:8081 as the upstream of the /docs route. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd plugins && cargo build --release --target wasm32-wasip2)
cargo build --release -p wasmgate
python3 -m http.server 8081 --bind 127.0.0.1 --directory docs >/dev/null 2>&1 &
files=$!
trap 'kill $files 2>/dev/null || true' EXIT INT TERM
cat <<MSG
wasmgate is starting on http://127.0.0.1:8080 (admin on http://127.0.0.1:9901). Try:
  curl -i localhost:8080/
  curl -i localhost:8080/hello/you                          # a plugin adds x-hello-plugin
  curl -i localhost:8080/private                            # key-auth plugin: 401
  curl -i -H 'x-api-key: demo-key' localhost:8080/private   # 200, then 429 after 5 a minute
  curl -i localhost:8080/docs/config.md
  curl -i localhost:8080/status/metrics
  curl -i --http2-prior-knowledge localhost:8080/
MSG
./target/release/wasmgate run --config config/wasmgate.toml
