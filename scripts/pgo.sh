#!/usr/bin/env bash
# Builds the production binary, profile-guided (PGO) and then laid out by
# BOLT: target/pgo/release/wasmgate.
#
#   1. an instrumented build (target/pgo-gen, -Cprofile-generate);
#   2. a training run: that binary serves a config with the example plugins
#      (hello-header, key-auth -> rate-limit -> header-transform,
#      deny-header, body-rewrite) on direct-response and forwarded routes,
#      over HTTP/1.1 (wrk), h2c (h2load) and TLS (wrk over https, with a
#      throwaway certificate from openssl); stopped with
#      SIGTERM, it writes its profile on the way out;
#   3. llvm-profdata (rustup component llvm-tools) merges the profile;
#   4. the release build with -Cprofile-use, in target/pgo-use (separate
#      from target/release, so neither build invalidates the other), linked
#      with --emit-relocs so that BOLT can move its functions;
#   5. BOLT (llvm-bolt, Debian bolt-22) instruments that binary and the
#      same training runs again on it;
#   6. BOLT lays the binary out by that profile (hot basic blocks together,
#      hot functions ordered by call graph, cold code split off) into
#      target/pgo/release/wasmgate.
# BOLT=0 skips 5-6 (the PGO binary is copied there as it is); so does a
# machine where bolt-22 cannot be installed, with a warning.
#
# The training set deliberately leaves out the test plugins (noop,
# header-one) that bench/plugin_cost.sh measures, so that benchmark is not
# the workload the binary was tuned on. Takes ~15 min on 2 cores (two
# release builds, two training runs). Environment: TRAIN_SECS (per route
# and protocol, default 3), BOLT (default 1). Needs python3 and openssl;
# installs wrk, curl, h2load (Debian nghttp2-client) and bolt-22 with
# apt-get when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRAIN_SECS="${TRAIN_SECS:-3}"
GEN_DIR="$ROOT/target/pgo-gen"
USE_DIR="$ROOT/target/pgo-use"
OUT="$ROOT/target/pgo/release/wasmgate"
BOLT="${BOLT:-1}"
DATA="$ROOT/target/pgo-data"
WASM="$ROOT/plugins/target/wasm32-wasip2/release"

log() { printf '[pgo] %s\n' "$*" >&2; }
die() { printf '[pgo] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[[ "$TRAIN_SECS" =~ ^[1-9][0-9]*$ ]] || die "TRAIN_SECS must be a positive integer"
[[ "$BOLT" =~ ^[01]$ ]] || die "BOLT must be 0 or 1"
install_missing wrk:wrk curl:curl h2load:nghttp2-client
LLVM_BOLT=""
if [ "$BOLT" = 1 ]; then
    # Debian's bolt-22 (BOLT of LLVM 22, the LLVM of this Rust).
    (install_missing llvm-bolt-22:bolt-22) || log "warning: bolt-22 could not be installed"
    LLVM_BOLT="$(command -v llvm-bolt-22 || true)"
    [ -n "$LLVM_BOLT" ] || log "warning: no llvm-bolt-22; the binary will be PGO only"
fi
for b in cargo rustup wrk curl h2load python3 openssl; do
    command -v "$b" >/dev/null 2>&1 || die "$b missing"
done

log "rustup component add llvm-tools (for llvm-profdata)"
rustup component add llvm-tools >/dev/null 2>&1 || die "rustup component add llvm-tools failed"
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ {print $2}')/bin/llvm-profdata"
[ -x "$PROFDATA" ] || die "no llvm-profdata at $PROFDATA"

log "building the plugins"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2) >&2

log "1/6 instrumented build ($GEN_DIR)"
rm -rf "$DATA"
mkdir -p "$DATA"
(cd "$ROOT" && CARGO_TARGET_DIR="$GEN_DIR" RUSTFLAGS="-Cprofile-generate=$DATA" \
    cargo build --release -p wasmgate) >&2

# Build scripts and proc macros were instrumented too and wrote their own
# profiles while the build ran: only the gateway's training run counts.
rm -f "$DATA"/*.profraw

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-pgo.XXXXXX")"
GW=""
cleanup() {
    [ -n "$GW" ] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# train <binary>: serves the training config with <binary> and loads every
# route over HTTP/1.1, h2c and TLS, then stops it with SIGTERM (an
# instrumented binary writes its profile on the way out).
train() {
    local p code
    read -r PORT TLS_PORT <<<"$(free_ports 2)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 \
        || die "openssl could not make a certificate"

    cat >"$TMP/train.toml" <<EOF
shutdown_grace = "1s"

[admin]
address = "127.0.0.1:0"

[log]
access_log = true
level = "warn"

[[listeners]]
name = "main"
address = "127.0.0.1:$PORT"

[[listeners]]
name = "tls"
address = "127.0.0.1:$TLS_PORT"
[[listeners.tls.certificates]]
cert = "cert.pem"
key = "key.pem"

# The gateway's own direct routes are the upstream of the forwarded ones.
[[upstreams]]
name = "self"
endpoints = ["127.0.0.1:$PORT"]

[[plugins]]
name = "hello"
path = "$WASM/hello_header.wasm"

[[plugins]]
name = "key-auth"
path = "$WASM/key_auth.wasm"

[[plugins]]
name = "rate-limit"
path = "$WASM/rate_limit.wasm"

[[plugins]]
name = "header-transform"
path = "$WASM/header_transform.wasm"

[[plugins]]
name = "deny-header"
path = "$WASM/deny_header.wasm"

[[plugins]]
name = "body-rewrite"
path = "$WASM/body_rewrite.wasm"

[[routes]]
name = "plain"
path = "/plain"
[routes.direct_response]
status = 200
body = "ok, a direct response from the gateway"

[[routes]]
name = "chain"
path = "/chain"
plugins = [
  { plugin = "key-auth", config = { header = "x-api-key", keys = { train-key = "train" } } },
  { plugin = "rate-limit", config = { limit = 1000000000, window_ms = 60000, key = "consumer" } },
  { plugin = "header-transform", config = { request = { set = { x-train = "1" } }, response = { remove = ["server"] } } },
]
[routes.direct_response]
status = 200
body = "ok"

[[routes]]
name = "forward"
path_prefix = "/fwd"
strip_prefix = "/fwd"
upstream = "self"
plugins = [
  { plugin = "hello", config = { greeting = "hi" } },
  { plugin = "deny-header", config = { header = "x-deny" } },
]

[[routes]]
name = "rewrite"
path_prefix = "/rw"
strip_prefix = "/rw"
upstream = "self"
plugins = [{ plugin = "body-rewrite", config = { response = [{ from = "gateway", to = "GATEWAY" }] } }]
EOF

    "$1" run --config "$TMP/train.toml" >"$TMP/gw.out" 2>"$TMP/gw.err" &
    GW=$!
    wait_ok "http://127.0.0.1:$PORT/plain" "$GW" || die "the gateway did not come up: $(cat "$TMP/gw.err")"
    HDR=(-H "x-api-key: train-key")
    PATHS="/plain /chain /fwd/plain /rw/plain"
    for p in $PATHS; do
        code="$(curl -s -o /dev/null -w '%{http_code}' "${HDR[@]}" "http://127.0.0.1:$PORT$p")"
        [ "$code" = 200 ] || die "$p answered $code during training"
        wrk -t1 -c32 -d"${TRAIN_SECS}s" "${HDR[@]}" "http://127.0.0.1:$PORT$p" >/dev/null
        h2load -D "$TRAIN_SECS" -c8 -m16 "${HDR[@]}" "http://127.0.0.1:$PORT$p" >/dev/null
        wrk -t1 -c16 -d"${TRAIN_SECS}s" "${HDR[@]}" "https://localhost:$TLS_PORT$p" >/dev/null
    done
    # The refusals too: no key (401), a denied header (403).
    wrk -t1 -c8 -d1s "http://127.0.0.1:$PORT/chain" >/dev/null
    wrk -t1 -c8 -d1s -H "x-deny: 1" "http://127.0.0.1:$PORT/fwd/plain" >/dev/null
    kill -TERM "$GW"
    wait "$GW" || die "the gateway under training did not exit cleanly: $(tail -5 "$TMP/gw.err")"
    GW=""
}

log "2/6 training run (${TRAIN_SECS}s per route and protocol)"
train "$GEN_DIR/release/wasmgate"
compgen -G "$DATA/*.profraw" >/dev/null || die "the training run wrote no profile to $DATA"

log "3/6 merging the profile"
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

log "4/6 optimised build ($USE_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR="$USE_DIR" \
    RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata -Clink-arg=-Wl,--emit-relocs" \
    cargo build --release -p wasmgate) >&2
mkdir -p "$(dirname "$OUT")"
if [ -z "$LLVM_BOLT" ]; then
    # Through a new file, so that a gateway running from $OUT is not hit.
    cp "$USE_DIR/release/wasmgate" "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    log "built $OUT (PGO only)"
    exit 0
fi

log "5/6 BOLT: instrumented binary, training run"
rm -f "$DATA/bolt.fdata"
"$LLVM_BOLT" "$USE_DIR/release/wasmgate" -instrument -o "$TMP/wasmgate-bolt-inst" \
    --instrumentation-file="$DATA/bolt.fdata" >"$TMP/bolt-inst.log" 2>&1 \
    || die "llvm-bolt -instrument failed: $(tail -5 "$TMP/bolt-inst.log")"
train "$TMP/wasmgate-bolt-inst"
[ -s "$DATA/bolt.fdata" ] || die "the BOLT training run wrote no profile"

log "6/6 BOLT: laying out $OUT"
"$LLVM_BOLT" "$USE_DIR/release/wasmgate" -o "$OUT.tmp" -data="$DATA/bolt.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions \
    -split-all-cold -split-eh -icf=1 -use-gnu-stack >"$TMP/bolt.log" 2>&1 \
    || die "llvm-bolt failed: $(tail -5 "$TMP/bolt.log")"
mv "$OUT.tmp" "$OUT"
log "built $OUT (PGO + BOLT)"
