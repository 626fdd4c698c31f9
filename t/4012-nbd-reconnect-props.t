#!/bin/bash
# SPDX-License-Identifier: MIT
# The nbd driver when a restarted server offers less than the first one did (another size,
# no multi-conn, read-only): the reconnect counts as failed, requests fail with EIO after the retry window,
# the log names the property and the daemon lives.
. "$(dirname "$0")/tap.sh"
. "$T_SRCDIR/nbd.sh"
require_root
require_fuse
require_cmd python3
S=$SCRATCH
mkdir "$S/mnt"
head -c $((16 << 20)) /dev/urandom >"$S/base.raw"
printf '[disk d]\nlayers = base\n\n' >"$S/a.conf"
nbd_layer base "$(nbd_uri base)" "retry-timeout=2" >>"$S/a.conf"

# restart WHAT NBDKIT-ARGS...: serve base.raw, start the daemon, restart the server with
# the arguments given, and expect EIO after the window and a log line naming WHAT.
restart() {
    local what=$1 r; shift
    nbd_serve base nbdkit -f -U "$(nbd_sock base)" file "$S/base.raw" || exit 1
    : >"$S/layerfs.log"
    start_daemon "$S/mnt" -c "$S/a.conf" || exit 1
    nbd_kill base KILL
    nbd_serve base nbdkit -f -U "$(nbd_sock base)" "$@" || exit 1
    r=$(timeout 60 bash -c "$(declare -f readtime); readtime '$S/mnt/d'")
    like "$r" "^EIO ([2-9]|1[0-9])\$" "$what changed: the read fails with EIO after the window ($r)"
    like "$(cat "$S/layerfs.log")" "base\.sock: .*$what" \
        "$what changed: the log names the URI and the property"
    ok "$what changed: the daemon lives" kill -0 "$_t_daemon_pid"
    stop_daemon
    nbd_kill base KILL
}
restart "size" --filter=truncate file "$S/base.raw" truncate=8M
restart "multi-conn" --filter=multi-conn file "$S/base.raw" multi-conn-mode=disable
restart "read-only" -r file "$S/base.raw"
done_testing
