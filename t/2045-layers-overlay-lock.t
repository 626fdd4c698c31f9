#!/bin/bash
# SPDX-License-Identifier: MIT
# One writer per overlay, whatever path leads to it: while layerfs has an overlay open, a
# second layerfs reaching the same file through a symlink, a hard link or a bind mount
# refuses to start (non-zero exit, "in use"), and so do layerfs-img check and commit; once
# the first is gone, the same second start succeeds.  The lock is on the file the driver
# opened, not on a second open by path.
. "$(dirname "$0")/tap.sh"
require_fuse
require_root
S=$SCRATCH

truncate -s 16M "$S/base.raw"
mkdir -p "$S/real" "$S/bind" "$S/mnt" "$S/mnt2"
# conf OVERLAY-PATH: a disk d of an overlay over the raw base.
conf() {
    printf '[disk d]\nlayers = top base\n\n[layer top]\nformat = overlay\npath = %s\n' "$1"
    printf 'create = true\n\n[layer base]\nformat = raw\npath = %s\nread-only = true\n' \
        "$S/base.raw"
}
conf "$S/real/top.ovl" >"$S/first.conf"
start_daemon "$S/mnt" -c "$S/first.conf" || { _t_result 1 "the first layerfs starts"; done_testing; exit; }
dd if=/dev/urandom of="$S/mnt/d" bs=64k count=4 conv=notrunc,fsync status=none

ln -s "$S/real/top.ovl" "$S/link.ovl"
ln "$S/real/top.ovl" "$S/hard.ovl"
mount --bind "$S/real" "$S/bind" && on_exit "umount -l '$S/bind'"

# second PATH WHAT: a second layerfs on the overlay through PATH must refuse to start.
second() {
    local out rc
    conf "$1" >"$S/second.conf"
    on_exit "fusermount3 -u '$S/mnt2' 2>/dev/null"
    out=$(timeout 20 "$LAYERFS" -f -c "$S/second.conf" "$S/mnt2" 2>&1)
    rc=$?
    _t_result $((rc == 0 || rc == 124)) "a second layerfs through $2 exits non-zero (exit $rc)"
    like "$out" "in use" "... saying the overlay is in use"
}
second "$S/link.ovl" "a symlink"
second "$S/hard.ovl" "a hard link"
if mountpoint -q "$S/bind"; then
    second "$S/bind/top.ovl" "a bind mount"
else
    _t_result 0 "# SKIP mount --bind failed here"
fi
like "$("$LAYERFS_IMG" check "$S/link.ovl" 2>&1)" "in use" \
    "layerfs-img check through a symlink refuses the overlay in use"
not_ok_cmd "layerfs-img commit through a symlink refuses the overlay in use" \
    "$LAYERFS_IMG" commit "$S/link.ovl" "$S/base.raw"

stop_daemon
is "$DAEMON_STATUS" 0 "the first layerfs exits 0"
conf "$S/link.ovl" >"$S/second.conf"
start_daemon "$S/mnt2" -c "$S/second.conf"
is "$?" 0 "with the first gone, layerfs starts through the symlink"
stop_daemon
done_testing
