#!/usr/bin/env bash
# What one plugin adds to a request's CPU inside the gateway, end to end.
#
# One gateway (pinned to CPU 0, one thread) serves direct-response routes
# (no upstream, so only the gateway's own work is measured):
#   /plain  no plugins
#   /noop   the noop test plugin, both head phases (call overhead alone)
#   /one    header-one: request phase only, reads a header and sets one
#   /both   header-transform: sets a request header, removes a response
#           header (both head phases, one host call in each)
#   /three  key-auth -> rate-limit -> header-transform (5 calls)
# wrk -t1 -cCONNS on CPU 1 loads one route at a time. The routes take turns
# within each round (plain, noop, one, both, three, plain, ...), so noise from the
# machine falls on all of them alike, and the figure reported for a plugin
# route is the median over rounds of its difference to /plain *in the same
# round*: CPU µs per request of the gateway process (utime + stime from
# /proc/PID/stat), which is what the plugin path adds, kernel included.
#
# COMPARE=/path/to/other/wasmgate runs a second gateway with the same config
# (also on CPU 0, idle while the first is loaded); both binaries take turns
# on every route of every round, and the report adds a table of
# the second against the first (e.g. the PGO build against the release one).
#
# Environment: ROUNDS=9, DURATION=3 (seconds per route and round), CONNS=50,
# NO_BUILD=1 (skip the release build), PGO=1 (the profile-guided build,
# target/pgo/release/wasmgate, made by scripts/pgo.sh), WASMGATE_BIN, RESULTS (default
# bench/results/plugin_cost.md). Needs wrk, curl, taskset, python3 and the
# plugins built (cd plugins && cargo build --release --target wasm32-wasip2).
set -euo pipefail

ROUNDS="${ROUNDS:-9}"
DURATION="${DURATION:-3}"
CONNS="${CONNS:-50}"
NO_BUILD="${NO_BUILD:-0}"
PGO="${PGO:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${RESULTS:-$ROOT/bench/results/plugin_cost.md}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
if [ "$PGO" = 1 ]; then
    WASMGATE_BIN="${WASMGATE_BIN:-$ROOT/target/pgo/release/wasmgate}"
else
    WASMGATE_BIN="${WASMGATE_BIN:-$TARGET_DIR/release/wasmgate}"
fi
WASM="$ROOT/plugins/target/wasm32-wasip2/release"

log() { printf '[plugin-cost] %s\n' "$*" >&2; }
die() { printf '[plugin-cost] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for v in ROUNDS DURATION CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$(nproc)" -ge 2 ] || die "need at least 2 CPUs"
for b in wrk curl taskset python3; do
    command -v "$b" >/dev/null 2>&1 || die "$b missing (bench/run.sh installs wrk and curl)"
done
if [ "$NO_BUILD" != 1 ]; then
    log "building the plugins and the release gateway"
    (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2) >&2
    if [ "$PGO" = 1 ]; then
        "$ROOT/scripts/pgo.sh" >&2
    else
        (cd "$ROOT" && cargo build --release -p wasmgate) >&2
    fi
fi
[ -x "$WASMGATE_BIN" ] || die "no binary at $WASMGATE_BIN"
COMPARE="${COMPARE:-}"
[ -z "$COMPARE" ] || [ -x "$COMPARE" ] || die "no binary at COMPARE=$COMPARE"
for p in noop header_one key_auth rate_limit header_transform; do
    [ -f "$WASM/$p.wasm" ] || die "no $WASM/$p.wasm: build the plugins first"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-plugin-cost.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

cat >"$TMP/gw.toml" <<EOF
[admin]
address = "127.0.0.1:0"

[log]
access_log = false
level = "warn"

[[listeners]]
name = "main"
address = "127.0.0.1:PORT"

[[plugins]]
name = "noop"
path = "$WASM/noop.wasm"

[[plugins]]
name = "one"
path = "$WASM/header_one.wasm"

[[plugins]]
name = "key-auth"
path = "$WASM/key_auth.wasm"

[[plugins]]
name = "rate-limit"
path = "$WASM/rate_limit.wasm"

[[plugins]]
name = "header-transform"
path = "$WASM/header_transform.wasm"
EOF
ROUTES="plain noop one both three"
for route in $ROUTES; do
    case "$route" in
        plain) chain="[]" ;;
        noop) chain='[{ plugin = "noop" }]' ;;
        one) chain='[{ plugin = "one" }]' ;;
        both) chain='[{ plugin = "header-transform", config = { request = { set = { x-bench = "1" } }, response = { remove = ["server"] } } }]' ;;
        three) chain='[
  { plugin = "key-auth", config = { header = "x-api-key", keys = { bench-key = "bench" } } },
  { plugin = "rate-limit", config = { limit = 1000000000, window_ms = 60000, key = "consumer" } },
  { plugin = "header-transform", config = { request = { set = { x-bench = "1" } }, response = { remove = ["server"] } } },
]' ;;
    esac
    cat >>"$TMP/gw.toml" <<EOF

[[routes]]
name = "$route"
path = "/$route"
plugins = $chain
[routes.direct_response]
status = 200
body = "ok"
EOF
done

# One gateway per binary, each on a free port (the gateway reports none for
# a fixed one), pinned to CPU 0 with one thread.
BINS=("$WASMGATE_BIN")
[ -z "$COMPARE" ] || BINS+=("$COMPARE")
read -r -a PORTS <<<"$(free_ports "${#BINS[@]}")"
HDR=(-H "x-bench-in: v" -H "x-api-key: bench-key")
for i in "${!BINS[@]}"; do
    port="${PORTS[$i]}"
    sed "s/127.0.0.1:PORT/127.0.0.1:$port/" "$TMP/gw.toml" >"$TMP/gw$i.toml"
    taskset -c 0 "${BINS[$i]}" run --config "$TMP/gw$i.toml" --threads 1 >"$TMP/gw$i.out" 2>"$TMP/gw$i.err" &
    PIDS+=($!)
    wait_ok "http://127.0.0.1:$port/plain" "${PIDS[$i]}" \
        || die "${BINS[$i]} did not come up: $(cat "$TMP/gw$i.err")"
    for route in $ROUTES; do
        code="$(curl -s -o /dev/null -w '%{http_code}' "${HDR[@]}" "http://127.0.0.1:$port/$route")"
        [ "$code" = 200 ] || die "/$route answered $code (${BINS[$i]})"
        taskset -c 1 wrk -t1 -c"$CONNS" -d1s "${HDR[@]}" "http://127.0.0.1:$port/$route" >/dev/null
    done
done

log "$ROUNDS rounds x 5 routes x ${#BINS[@]} binaries x ${DURATION}s"
: >"$TMP/raw"
for r in $(seq 1 "$ROUNDS"); do
    for route in $ROUTES; do
        for i in "${!BINS[@]}"; do
            pid="${PIDS[$i]}"
            read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
            out="$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${HDR[@]}" "http://127.0.0.1:${PORTS[$i]}/$route")"
            read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
            n="$(awk '/requests in/ {print $1}' <<<"$out")"
            echo "$r $i $route $n $((u1 - u0)) $((s1 - s0))" >>"$TMP/raw"
        done
    done
done

rel() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
python3 - "$TMP/raw" "$(getconf CLK_TCK)" "$ROUNDS" "$DURATION" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" "$(rel "$WASMGATE_BIN")" ${COMPARE:+"$(rel "$COMPARE")"} >"$RESULTS" <<'PY'
import sys, statistics as st, datetime
raw, tck, rounds, dur, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
binaries = sys.argv[6:]
d = {}
for line in open(raw):
    r, b, route, n, u, s = line.split()
    d[(int(b), r, route)] = (int(n), (int(u) + int(s)) * 1e6 / tck / int(n), int(s) * 1e6 / tck / int(n))
rs = sorted({r for _, r, _ in d}, key=int)
names = {"plain": "no plugins", "noop": "noop, both head phases (2 calls)",
         "one": "header-one, request phase (1 call, 2 host calls)",
         "both": "header-transform, both head phases (2 calls, 1 host call each)",
         "three": "key-auth → rate-limit → header-transform (5 calls)"}
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
routes = ["plain", "noop", "one", "both", "three"]
def added(b, r, route):
    return d[(b, r, route)][1] - d[(b, r, "plain")][1]
print(f"## What a plugin adds per request (bench/plugin_cost.sh)\n")
print(f"- date: {now}; wasmgate {rev}; {rounds} rounds × 5 routes × {dur} s" + (f" × {len(binaries)} binaries" if len(binaries) > 1 else "") + ", routes interleaved in each round")
print("- CPU µs/req: the gateway process's utime + stime ÷ requests; added = the route's figure minus /plain's in the same round")
for b, binary in enumerate(binaries):
    print(f"\n### {binary}\n")
    print("| route | req/s (median) | CPU µs/req (median) | added µs/req: median | added: min … max over rounds | of the added: kernel (stime), median |")
    print("|---|---|---|---|---|---|")
    for route in routes:
        rate = st.median(d[(b, r, route)][0] / float(dur) for r in rs)
        cpu = [d[(b, r, route)][1] for r in rs]
        if route == "plain":
            print(f"| {names[route]} | {rate:,.0f} | {st.median(cpu):.1f} | – | – | – |")
            continue
        a = [added(b, r, route) for r in rs]
        kernel = st.median(d[(b, r, route)][2] - d[(b, r, "plain")][2] for r in rs)
        print(f"| {names[route]} | {rate:,.0f} | {st.median(cpu):.1f} | {st.median(a):+.1f} | {min(a):+.1f} … {max(a):+.1f} | {kernel:+.1f} |")
if len(binaries) > 1:
    print(f"\n### {binaries[1]} against {binaries[0]}, same rounds\n")
    print("| route | CPU µs/req: ratio, median (min … max over rounds) | added µs/req: difference, median |")
    print("|---|---|---|")
    for route in routes:
        ratio = [d[(1, r, route)][1] / d[(0, r, route)][1] for r in rs]
        diff = "–" if route == "plain" else f"{st.median(added(1, r, route) - added(0, r, route) for r in rs):+.1f}"
        print(f"| {names[route]} | {st.median(ratio):.2f} ({min(ratio):.2f} … {max(ratio):.2f}) | {diff} |")
PY
cat "$RESULTS"
log "written to $RESULTS"
