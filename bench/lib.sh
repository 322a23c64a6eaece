# Helpers shared by the bench scripts and scripts/pgo.sh; source it after
# defining `die`.

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
