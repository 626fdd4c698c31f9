# SPDX-License-Identifier: MIT
# t/nbd.sh: NBD servers for the t/4000-nbd-*.t tests, sourced after t/tap.sh.  Servers
# listen on Unix sockets in $SCRATCH and are killed at exit.
#
#   nbd_uri NAME                 the URI of server NAME's default export
#   nbd_serve NAME CMD...        run CMD (a server in the foreground, on nbd_sock NAME) in
#                                the background, wait for its socket; NBD_PID_NAME = its pid
#   nbd_kill NAME [SIG]          kill server NAME (default SIGKILL) and wait for it (at
#                                most 5 s, then SIGKILL)
#   nbd_layer LAYER URI [KEY=VALUE...]   a [layer] group for the nbd driver
#   readtime FILE                read 4K at 1M with O_DIRECT; prints "OK|ERRNO SECONDS"

require_cmd nbdkit

nbd_sock() { printf '%s/%s.sock' "$SCRATCH" "$1"; }
nbd_uri() { printf 'nbd+unix:///?socket=%s' "$(nbd_sock "$1")"; }

nbd_serve() {
    local name=$1 i; shift
    rm -f "$(nbd_sock "$name")"
    "$@" >>"$SCRATCH/$name.log" 2>&1 &
    eval "NBD_PID_$name=$!"
    on_exit "kill -KILL $! 2>/dev/null; wait $! 2>/dev/null"
    for ((i = 0; i < 200; i++)); do
        [ -S "$(nbd_sock "$name")" ] && return 0
        kill -0 $! 2>/dev/null || break
        sleep 0.05
    done
    diag "NBD server $name did not start:"
    sed 's/^/#   /' "$SCRATCH/$name.log"
    return 1
}

nbd_kill() {
    local pid i
    eval "pid=\${NBD_PID_$1:-}"
    [ -n "$pid" ] || return 0
    kill "-${2:-KILL}" "$pid" 2>/dev/null
    # nbdkit 1.32 on SIGTERM waits for its clients to hang up, and an idle connection never
    # learns of the shutdown (nor does anything reach it): kill it after 5 s, or wait hangs.
    for ((i = 0; i < 50; i++)); do
        [ "${2:-KILL}" != KILL ] || break
        case $(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) in ''|Z) break ;; esac
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    eval "NBD_PID_$1="
    return 0
}

nbd_layer() {
    local layer=$1 uri=$2; shift 2
    printf '[layer %s]\ndriver = nbd\nuri = %s\n' "$layer" "$uri"
    [ $# -eq 0 ] || printf '%s\n' "$@" | sed 's/=/ = /'
    printf '\n'
}

readtime() {
    python3 - "$1" <<'PY'
import errno, mmap, os, sys, time
t = time.time()
buf = mmap.mmap(-1, 4096)
try:
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
    os.preadv(fd, [buf], 1 << 20)
    r = "OK"
except OSError as e:
    r = errno.errorcode[e.errno]
print(r, int(time.time() - t))
PY
}
