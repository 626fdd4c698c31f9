# SPDX-License-Identifier: MIT
# t/nbd.sh: NBD servers for the t/4000-nbd-*.t tests, sourced after t/tap.sh.  Servers
# listen on Unix sockets in $SCRATCH and are killed at exit.
#
#   nbd_uri NAME                 the URI of server NAME's default export
#   nbd_serve NAME CMD...        run CMD (a server in the foreground, on nbd_sock NAME) in
#                                the background, wait for its socket; NBD_PID_NAME = its pid
#   nbd_kill NAME [SIG]          kill server NAME (default SIGKILL) and wait for it
#   nbd_layer LAYER URI [KEY=VALUE...]   a [layer] group for the nbd driver

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
    local pid
    eval "pid=\${NBD_PID_$1:-}"
    [ -n "$pid" ] || return 0
    kill "-${2:-KILL}" "$pid" 2>/dev/null
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
