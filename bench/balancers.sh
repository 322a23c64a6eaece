#!/usr/bin/env bash
# wasmgate benchmark: throughput with 4 upstream endpoints under each balancer,
# in one run, and each balancer's overhead against round-robin.
#
# Method (as bench/run.sh, BRIEF §5): wasmgate pinned to CPU 0 with one worker
# thread; the upstream (one nginx, 1 worker, 4 `listen` ports = 4 endpoints,
# `return 200 "ok"`) and `wrk -t1 -c$CONNS` share CPU 1. Every balancer gets a
# warm-up, then ROUNDS rounds of DURATION seconds, the balancers interleaved
# within each round (one gateway per balancer, started together); medians of
# req/s, p99 and CPU µs per request on CPU 0 (/proc/stat busy time ÷
# requests) are reported.
# wrk sends an `x-user` header drawn from 1,000 values (a Lua script, used for
# every balancer so the load is the same); consistent-hash hashes on it.
#
# Environment: ROUNDS=3 DURATION=10 WARMUP=2 CONNS=50 NO_BUILD=1
#   WASMGATE_BIN=... BALANCERS="round-robin weighted-round-robin least-request random consistent-hash"
#   RESULTS=bench/results/balancers.md KEEP_TMP=1
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-50}"
BALANCERS="${BALANCERS:-round-robin weighted-round-robin least-request random consistent-hash}"
NO_BUILD="${NO_BUILD:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
PROXY_CPU=0
LOAD_CPU=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${RESULTS:-$ROOT/bench/results/balancers.md}"

log() { printf '[bench-balancers] %s\n' "$*" >&2; }
die() { printf '[bench-balancers] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WASMGATE_BIN="${WASMGATE_BIN:-$(default_wasmgate_bin)}"

for v in ROUNDS DURATION WARMUP CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$(nproc)" -ge 2 ] || die "need at least 2 CPUs"
for b in nginx wrk curl taskset python3; do
    command -v "$b" >/dev/null 2>&1 || die "$b missing (bench/run.sh installs nginx, wrk, curl)"
done
NGINX="$(command -v nginx)"

if [ "$NO_BUILD" != 1 ]; then
    log "building: cargo build --release -p wasmgate"
    (cd "$ROOT" && cargo build --release -p wasmgate) >&2
fi
[ -x "$WASMGATE_BIN" ] || die "no binary at $WASMGATE_BIN"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-bench-balancers.XXXXXX")"
chmod 755 "$TMP"
PIDS=()
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r -a PORTS <<<"$(free_ports 9)"
UP_PORTS=("${PORTS[@]:0:4}")
GW_PORTS=("${PORTS[@]:4:5}")

# Upstream: one nginx worker on the load CPU, four ports.
mkdir -p "$TMP/upstream/tmp"
{
    echo "daemon off; master_process on; worker_processes 1;"
    [ "$(id -u)" -ne 0 ] || echo "user root root;"
    echo "pid $TMP/upstream/nginx.pid; error_log $TMP/upstream/error.log warn;"
    echo "events { worker_connections 4096; multi_accept on; }"
    echo "http { access_log off; keepalive_timeout 300s; keepalive_requests 10000000; default_type text/plain;"
    echo "  client_body_temp_path $TMP/upstream/tmp/b; proxy_temp_path $TMP/upstream/tmp/p; fastcgi_temp_path $TMP/upstream/tmp/f; uwsgi_temp_path $TMP/upstream/tmp/u; scgi_temp_path $TMP/upstream/tmp/s;"
    echo "  server {"
    for p in "${UP_PORTS[@]}"; do echo "    listen 127.0.0.1:$p backlog=4096;"; done
    echo "    location / { return 200 \"ok\"; }"
    echo "  }"
    echo "}"
} >"$TMP/upstream/nginx.conf"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
    >"$TMP/upstream.out" 2>&1 </dev/null &
UP_PID=$!
PIDS+=("$UP_PID")
for p in "${UP_PORTS[@]}"; do wait_ok "http://127.0.0.1:$p/" "$UP_PID" || die "upstream nginx did not come up"; done
log "upstream nginx on ports ${UP_PORTS[*]} (CPU $LOAD_CPU)"

cat >"$TMP/users.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["x-user"] = "user-" .. (n % 1000) })
end
LUA
WRK=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -s "$TMP/users.lua")

cpu_sample() { awk -v c="cpu$PROXY_CPU" '$1 == c { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6; exit }' /proc/stat; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
to_ms() {
    awk -v t="$1" 'BEGIN { match(t, /^[0-9.]+/); n = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : 60000; printf "%.3f\n", n * f }'
}

LOAD_BEFORE="$(cut -d" " -f1-3 /proc/loadavg)"
declare -A RPS P99 CPU UTIL ERR PORT
declare -A L_RPS L_P99 L_CPU L_UTIL
ROUNDS_MD=""
# One gateway per balancer, all started first (idle ones cost nothing), so
# the rounds can be interleaved: noise from the shared machine then falls
# on every balancer alike instead of on whichever ran during it.
i=0
for bal in $BALANCERS; do
    [ "$i" -lt "${#GW_PORTS[@]}" ] || die "at most ${#GW_PORTS[@]} balancers"
    port="${GW_PORTS[$i]}"; i=$((i + 1)); PORT[$bal]="$port"
    extra=""
    [ "$bal" = consistent-hash ] && extra='hash_on = { header = "x-user" }'
    eps=""
    for p in "${UP_PORTS[@]}"; do eps+="{ address = \"127.0.0.1:$p\", weight = 1 }, "; done
    mkdir -p "$TMP/$bal"
    cat >"$TMP/$bal/wasmgate.toml" <<TOML
[log]
level = "warn"
access_log = false

[[listeners]]
name = "bench"
address = "127.0.0.1:$port"

[[upstreams]]
name = "nginx"
endpoints = [${eps%, }]
balancer = "$bal"
$extra

[[routes]]
name = "all"
upstream = "nginx"
TOML
    taskset -c "$PROXY_CPU" "$WASMGATE_BIN" run --config "$TMP/$bal/wasmgate.toml" --threads 1 \
        >"$TMP/$bal.out" 2>"$TMP/$bal.err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_ok "http://127.0.0.1:$port/" "$pid" || { tail -n 20 "$TMP/$bal.err" >&2; die "$bal: wasmgate did not start"; }
    log "$bal: warm-up ${WARMUP}s"
    "${WRK[@]}" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
done
# Another benchmark on this 2-core machine ruins the figures: wait for any
# other wrk to finish (bounded) before each round, and say so if one ran.
FOREIGN=""
wait_quiet() {
    local i
    for i in $(seq 1 600); do
        pgrep -x wrk >/dev/null 2>&1 || return 0
        [ "$i" = 1 ] && log "another wrk is running; waiting for it to finish"
        sleep 1
    done
    FOREIGN="another wrk was running during the measurement; "
}
for r in $(seq 1 "$ROUNDS"); do
    for bal in $BALANCERS; do
        url="http://127.0.0.1:${PORT[$bal]}/"
        wait_quiet
        read -r t0 i0 <<<"$(cpu_sample)"
        out="$("${WRK[@]}" -d"${DURATION}s" --latency "$url" 2>&1)"
        read -r t1 i1 <<<"$(cpu_sample)"
        busy=$(((t1 - t0) - (i1 - i0))); total=$((t1 - t0))
        reqs="$(awk '/ requests in / { print $1; exit }' <<<"$out")"
        rps="$(awk '/^Requests\/sec:/ { print $2; exit }' <<<"$out")"
        p99="$(to_ms "$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' <<<"$out")")"
        non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' <<<"$out")"
        [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { printf '%s\n' "$out" >&2; die "$bal: cannot parse wrk output"; }
        [ -z "$non2xx" ] || ERR[$bal]="non-2xx: $non2xx"
        cpu="$(awk -v b="$busy" -v n="$reqs" 'BEGIN { printf "%.3f\n", b * 10000 / n }')"
        util="$(awk -v b="$busy" -v t="$total" 'BEGIN { printf "%.1f\n", 100 * b / t }')"
        L_RPS[$bal]+="$rps "; L_P99[$bal]+="$p99 "; L_CPU[$bal]+="$cpu "; L_UTIL[$bal]+="$util "
        ROUNDS_MD+="| $bal | $r | $rps | $p99 | $cpu | $util % |"$'\n'
        log "$bal: round $r: $rps req/s, p99 $p99 ms, $cpu us/req, CPU $PROXY_CPU $util % busy"
    done
done
for bal in $BALANCERS; do
    # shellcheck disable=SC2086
    RPS[$bal]="$(median ${L_RPS[$bal]})"; P99[$bal]="$(median ${L_P99[$bal]})"
    # shellcheck disable=SC2086
    CPU[$bal]="$(median ${L_CPU[$bal]})"; UTIL[$bal]="$(median ${L_UTIL[$bal]})"
done
LOAD_AFTER="$(cut -d" " -f1-3 /proc/loadavg)"

RR_RPS="${RPS[round-robin]:-}"; RR_CPU="${CPU[round-robin]:-}"
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%+.1f %%\n", 100 * (a - b) / b }'; }
REPORT="$(
    echo "## 4 upstream endpoints, per balancer"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); load average before / after the run: $LOAD_BEFORE / $LOAD_AFTER"
    echo "- machine: $(nproc) CPUs, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r)"
    echo "- wasmgate git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); nginx $("$NGINX" -v 2>&1 | sed -n 's#.*nginx/##p')"
    echo "- method: wasmgate on CPU $PROXY_CPU (1 thread); one nginx worker with 4 ports (4 endpoints) and \`wrk -t1 -c$CONNS\` (Lua: \`x-user\` from 1,000 values) on CPU $LOAD_CPU; ${WARMUP} s warm-up each, then $ROUNDS rounds of ${DURATION} s, balancers interleaved within each round; medians"
    echo
    echo "| balancer | req/s | p99 ms | CPU µs/req on proxy core | CPU $PROXY_CPU busy | req/s vs round-robin | CPU/req vs round-robin |"
    echo "|---|---|---|---|---|---|---|"
    for bal in $BALANCERS; do
        echo "| $bal | ${RPS[$bal]} | ${P99[$bal]} | ${CPU[$bal]} | ${UTIL[$bal]} % | $(pct "${RPS[$bal]}" "$RR_RPS") | $(pct "${CPU[$bal]}" "$RR_CPU") |"
    done
    for bal in $BALANCERS; do [ -z "${ERR[$bal]:-}" ] || echo "**Warning** $bal: ${ERR[$bal]}"; done
    [ -z "$FOREIGN" ] || echo "**Warning**: $FOREIGN"
    echo
    echo "<details><summary>per-round figures</summary>"
    echo
    echo "| balancer | round | req/s | p99 ms | µs/req | CPU $PROXY_CPU busy |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$ROUNDS_MD"
    echo
    echo "</details>"
)"
mkdir -p "$(dirname "$RESULTS")"
printf '%s\n' "$REPORT" >"$RESULTS"
printf '%s\n' "$REPORT"
log "written to $RESULTS"
