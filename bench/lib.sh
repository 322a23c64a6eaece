# Helpers shared by the bench scripts and scripts/pgo.sh; source it after
# defining `log` and `die` (and ROOT, the repository).

# default_wasmgate_bin: the gateway the bench scripts run unless
# WASMGATE_BIN is set: the profile-guided build with PGO=1 (scripts/pgo.sh),
# else the release build under CARGO_TARGET_DIR (default target/).
default_wasmgate_bin() {
    if [ "${PGO:-0}" = 1 ]; then
        echo "$ROOT/target/pgo/release/wasmgate"
        return
    fi
    local dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$dir" in /*) ;; *) dir="$ROOT/$dir" ;; esac
    echo "$dir/release/wasmgate"
}

# build_gateway: builds that binary (PGO=1: all of scripts/pgo.sh).
build_gateway() {
    if [ "${PGO:-0}" = 1 ]; then
        "$ROOT/scripts/pgo.sh" >&2
    else
        (cd "$ROOT" && cargo build --release -p wasmgate) >&2
    fi
}

# install_missing <command:package>...: installs with apt-get the package of
# every command that is missing (needs root on Debian).
install_missing() {
    local need=() c
    for c in "$@"; do
        command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
    done
    [ "${#need[@]}" -gt 0 ] || return 0
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
        || die "missing: ${need[*]}; run as root on Debian or install them"
    log "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
}

# free_ports <n>: n free loopback ports, bound all at once to :0 so they are
# distinct.
free_ports() {
    local n="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
    else
        # Fallback: random high ports with nothing listening on them.
        local out=() p tries=0
        while [ "${#out[@]}" -lt "$n" ]; do
            tries=$((tries + 1)); [ "$tries" -lt 1000 ] || die "could not find free ports"
            p=$((20000 + RANDOM % 30000))
            case " ${out[*]} " in *" $p "*) continue ;; esac
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then out+=("$p"); fi
        done
        echo "${out[*]}"
    fi
}

# wait_ok <url> <pid>: poll until the URL answers 200 (~10 s at most); fails
# at once if the process is gone.
wait_ok() {
    local i
    for i in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || return 1
        [ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true)" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

# nginx configs for the bench scripts; everything of server <name> lives in
# $TMP/<name>/ (the caller defines TMP), its config in $TMP/<name>/nginx.conf.
NGINX_USER_LINE=""
[ "$(id -u)" -ne 0 ] || NGINX_USER_LINE="user root root;"

# nginx_conf <name> <http-block-body>: one worker, no access log, keep-alive
# without limits, temp files under $TMP/<name>/tmp.
nginx_conf() {
    local d="$TMP/$1"
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
$NGINX_USER_LINE
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    default_type text/plain;
$2
}
EOF
}

# nginx_upstream_conf <name> <port>: the benchmarks' upstream, answering
# `200 ok` to everything; /_bench/headers (used only by plugin sanity checks,
# never measured) shows what a proxy's request filters did to the headers.
nginx_upstream_conf() {
    nginx_conf "$1" "    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { return 200 \"ok\"; }
        location = /_bench/headers {
            return 200 \"x-bench=\$http_x_bench x-api-key=\$http_x_api_key x-bench-out=\$http_x_bench_out\";
        }
    }"
}

# nginx_proxy_conf <name> <port> <upstream-port>: nginx as the reverse proxy
# peer, tuned as for any peer (HTTP/1.1 and keep-alive to the upstream).
nginx_proxy_conf() {
    nginx_conf "$1" "    upstream backend {
        server 127.0.0.1:$3;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
}

# The routes the plugin benchmarks (plugin_cost.sh, plugin_instructions.sh)
# load: no plugins, the noop test plugin (both head phases), header-one
# (request phase), header-transform in both head phases, the 3-plugin chain.
PLUGIN_ROUTES="plain noop one both three"

# check_plugin_files <wasm-dir>: the components those routes need are built.
check_plugin_files() {
    local p
    for p in noop header_one key_auth rate_limit header_transform; do
        [ -f "$1/$p.wasm" ] || die "no $1/$p.wasm: build the plugins first"
    done
}

# plugin_routes_toml <wasm-dir> <target>: the [[plugins]] and [[routes]] of
# a gateway config serving PLUGIN_ROUTES at /<route>; <target> is the TOML
# each route ends with (a direct response, or `upstream = "…"`).
plugin_routes_toml() {
    local wasm="$1" target="$2" p route chain
    for p in noop:noop one:header_one key-auth:key_auth rate-limit:rate_limit header-transform:header_transform; do
        printf '\n[[plugins]]\nname = "%s"\npath = "%s/%s.wasm"\n' "${p%%:*}" "$wasm" "${p#*:}"
    done
    for route in $PLUGIN_ROUTES; do
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
        printf '\n[[routes]]\nname = "%s"\npath = "/%s"\nplugins = %s\n%s\n' "$route" "$route" "$chain" "$target"
    done
}
