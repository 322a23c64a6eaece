#!/usr/bin/env bash
# What a plugin adds per request, counted instead of timed: the gateway runs
# under Valgrind's callgrind (instruction counts and a simulated cache), and
# each route of bench/lib.sh's PLUGIN_ROUTES (no plugins, noop, header-one,
# header-transform in both phases, the 3-plugin chain) gets N requests from
# h2load (HTTP/1.1, 10 connections), with the counters zeroed before and
# dumped after each route. The counts do not depend on the machine's load,
# so two builds can be compared to a few instructions per request on a noisy
# machine where timings scatter by microseconds.
#
# What it does not show: the kernel's work (user space only), and time:
# an instruction count is not CPU time (a copy done with `rep movsb` counts
# one instruction per byte; cache misses cost far more than instructions).
# The cache columns come from callgrind's model (L1i/L1d 32 KiB 8-way, a
# 512 KiB 8-way last level, like this machine's L2), not from hardware
# counters, which this VM does not expose.
#
# UPSTREAM=1: the routes forward to an upstream (nginx, `return 200 "ok"`,
# outside Valgrind) instead of answering themselves, as in bench/run.sh.
#
# Environment: N=4000 requests per route, UPSTREAM=1, NO_BUILD=1 (skip building the
# plugins and the release gateway), PGO=1 (the make-pgo binary),
# WASMGATE_BIN, RESULTS (default bench/results/plugin_instructions.md),
# KEEP=1 (keep the callgrind dumps, for callgrind_annotate). Installs
# valgrind, nghttp2-client (h2load) and curl with apt-get when missing.
set -euo pipefail

N="${N:-4000}"
NO_BUILD="${NO_BUILD:-0}"
PGO="${PGO:-0}"
KEEP="${KEEP:-0}"
UPSTREAM="${UPSTREAM:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${RESULTS:-$ROOT/bench/results/plugin_instructions.md}"
WASM="$ROOT/plugins/target/wasm32-wasip2/release"

log() { printf '[plugin-instructions] %s\n' "$*" >&2; }
die() { printf '[plugin-instructions] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
WASMGATE_BIN="${WASMGATE_BIN:-$(default_wasmgate_bin)}"

[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer (got '$N')"
tools=(valgrind:valgrind callgrind_control:valgrind h2load:nghttp2-client curl:curl)
[ "$UPSTREAM" != 1 ] || tools+=(nginx:nginx)
install_missing "${tools[@]}"
if [ "$NO_BUILD" != 1 ]; then
    log "building the plugins and the gateway"
    (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2) >&2
    build_gateway
fi
[ -x "$WASMGATE_BIN" ] || die "no binary at $WASMGATE_BIN"
check_plugin_files "$WASM"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-plugin-instructions.XXXXXX")"
VG=""
UP=""
cleanup() {
    [ -z "$VG" ] || { kill "$VG" 2>/dev/null && wait "$VG" 2>/dev/null; }
    [ -z "$UP" ] || { kill "$UP" 2>/dev/null && wait "$UP" 2>/dev/null; }
    if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

read -r PORT UP_PORT <<<"$(free_ports 2)"
if [ "$UPSTREAM" = 1 ]; then
    nginx_upstream_conf upstream "$UP_PORT"
    nginx -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" &
    UP=$!
    wait_ok "http://127.0.0.1:$UP_PORT/" "$UP" || die "upstream nginx did not come up: $(cat "$TMP/upstream/error.log")"
    TARGET='upstream = "nginx"'
    UPSTREAM_TOML="
[[upstreams]]
name = \"nginx\"
endpoints = [\"127.0.0.1:$UP_PORT\"]"
else
    TARGET='[routes.direct_response]
status = 200
body = "ok"'
    UPSTREAM_TOML=""
fi
# Valgrind cannot map the address space of the default 2,000 instance slots
# (~8 TiB; it manages about 64 GiB): 8 slots (~34 GiB) hold the 6 pools'
# instances, and one thread calling plugins directly never needs more.
{
    cat <<EOF
plugin_instance_slots = 8

[log]
access_log = false
level = "warn"

[[listeners]]
name = "main"
address = "127.0.0.1:$PORT"
$UPSTREAM_TOML
EOF
    plugin_routes_toml "$WASM" "$TARGET"
} >"$TMP/gw.toml"

log "starting the gateway under callgrind (slow: ~50x)"
valgrind --tool=callgrind --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=524288,8,64 \
    --callgrind-out-file="$TMP/callgrind.out" \
    "$WASMGATE_BIN" run --config "$TMP/gw.toml" --threads 1 >"$TMP/gw.out" 2>"$TMP/gw.err" &
VG=$!
for _ in $(seq 1 600); do
    grep -qx ready "$TMP/gw.out" 2>/dev/null && break
    kill -0 "$VG" 2>/dev/null || die "the gateway did not start: $(grep -v '^==' "$TMP/gw.err" | tail -5)"
    sleep 0.1
done
grep -qx ready "$TMP/gw.out" || die "the gateway was not ready within 60 s"

load() { # load <route> <requests>: all must succeed
    local out
    out="$(h2load --h1 -n "$2" -c 10 -H "x-bench-in: v" -H "x-api-key: bench-key" "http://127.0.0.1:$PORT/$1" 2>&1)"
    grep -q "$2 succeeded" <<<"$out" || die "/$1: not all of $2 requests succeeded: $(grep '^requests:' <<<"$out")"
}
for route in $PLUGIN_ROUTES; do load "$route" $((N / 2)); done
i=0
for route in $PLUGIN_ROUTES; do
    callgrind_control -z "$VG" >/dev/null
    load "$route" "$N"
    callgrind_control -d "$route" "$VG" >/dev/null
    i=$((i + 1))
    [ -s "$TMP/callgrind.out.$i" ] || die "no callgrind dump for /$route"
    echo "$route $TMP/callgrind.out.$i" >>"$TMP/dumps"
done
kill "$VG"; wait "$VG" 2>/dev/null || true; VG=""

rel() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no -- gateway 2>/dev/null)" ] || REV="$REV-dirty"
python3 - "$TMP/dumps" "$N" "$REV" "$(rel "$WASMGATE_BIN")" "$UPSTREAM" >"$RESULTS" <<'PY'
import sys, datetime
dumps, n, rev, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
routes = "routes forwarding to an upstream (nginx, outside Valgrind)" if sys.argv[5] == "1" else "direct-response routes"
names = {"plain": "no plugins", "noop": "noop, both head phases (2 calls)",
         "one": "header-one, request phase (1 call, 2 host calls)",
         "both": "header-transform, both head phases (2 calls, 1 host call each)",
         "three": "key-auth → rate-limit → header-transform (5 calls)"}
per = {}
for line in open(dumps):
    route, path = line.split()
    events = totals = None
    for l in open(path):
        if l.startswith("events:"):
            events = l.split()[1:]
        elif l.startswith(("summary:", "totals:")):
            totals = [int(x) for x in l.split()[1:]]
    e = dict(zip(events, totals))
    per[route] = (e["Ir"] / n, e["I1mr"] / n, (e["D1mr"] + e["D1mw"]) / n,
                  (e["ILmr"] + e["DLmr"] + e["DLmw"]) / n)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("## What a plugin adds per request, counted (bench/plugin_instructions.sh)\n")
print(f"- date: {now}; wasmgate {rev} ({binary}); {n} requests per route (HTTP/1.1, 10 connections) after {n // 2} of warm-up; {routes}")
print("- user-space instructions and simulated cache misses of the gateway process (callgrind: L1i/L1d 32 KiB, last level 512 KiB), per request\n")
print("| route | instructions | added | L1i misses | added | L1d misses | added | last-level misses | added |")
print("|---|---|---|---|---|---|---|---|---|")
base = per["plain"]
for route in ["plain", "noop", "one", "both", "three"]:
    v = per[route]
    cells = []
    for x, b in zip(v, base):
        cells.append(f"{x:,.0f}" if x >= 100 else f"{x:.1f}")
        cells.append("–" if route == "plain" else (f"{x - b:+,.0f}" if abs(x - b) >= 100 else f"{x - b:+.1f}"))
    print(f"| {names[route]} | " + " | ".join(cells) + " |")
PY
cat "$RESULTS"
log "written to $RESULTS"
