#!/bin/bash
# SPDX-License-Identifier: MIT
# The exposed file as a loop device, with and without --direct-io=on: mkfs.ext4, mount,
# write files, umount, fsck -n clean, and the files intact after a remount and a restart.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd losetup mkfs.ext4 fsck.ext4 mount umount md5sum

MNT=$SCRATCH/mnt
FS=$SCRATCH/fs
mkdir "$MNT" "$FS"
truncate -s 256M "$SCRATCH/img"
head -c 3M /dev/urandom >"$SCRATCH/f1"
head -c 123457 /dev/urandom >"$SCRATCH/f2"

start_daemon "$MNT" --disk "vm=$SCRATCH/img" -t 2 || exit 1

for dio in off on; do
    LOOP=$(losetup -f --show --direct-io=$dio "$MNT/vm" 2>"$SCRATCH/losetup.err")
    if [ -z "$LOOP" ]; then
        _t_result 1 "losetup --direct-io=$dio"
        diag "$(cat "$SCRATCH/losetup.err")"
        continue
    fi
    # Detach only what is still backed by our file: the number may be reused once freed.
    on_exit "losetup -n -O NAME -j '$MNT/vm' | xargs -r -n1 losetup -d"
    _t_result 0 "losetup --direct-io=$dio ($LOOP)"
    diag "loop dio in effect: $(cat /sys/block/${LOOP#/dev/}/loop/dio 2>/dev/null)"
    ok "dio=$dio: mkfs.ext4" mkfs.ext4 -q -F "$LOOP"
    ok "dio=$dio: mount" mount "$LOOP" "$FS"
    ok "dio=$dio: write files" sh -c "cp '$SCRATCH/f1' '$SCRATCH/f2' '$FS/' && mkdir '$FS/d' &&
        for i in \$(seq 50); do echo file \$i >'$FS/d/'\$i; done && sync"
    ok "dio=$dio: umount" umount "$FS"
    ok "dio=$dio: fsck -n clean" fsck.ext4 -n -f "$LOOP"
    ok "dio=$dio: mount again" mount "$LOOP" "$FS"
    cmp_file "$FS/f1" "$SCRATCH/f1" "dio=$dio: f1 intact"
    cmp_file "$FS/f2" "$SCRATCH/f2" "dio=$dio: f2 intact"
    is "$(cat "$FS/d/50")" "file 50" "dio=$dio: small files intact"
    ok "dio=$dio: umount" umount "$FS"
    ok "dio=$dio: losetup -d" losetup -d "$LOOP"
done

stop_daemon
is "$DAEMON_STATUS" "0" "clean exit"
# The backing file alone is a clean file system with the files.
ok "fsck -n on the backing file" fsck.ext4 -n -f "$SCRATCH/img"
start_daemon "$MNT" --disk "vm=$SCRATCH/img" --cache=page || exit 1
ok "mount the exposed file directly (page cache mode)" mount -o loop "$MNT/vm" "$FS"
cmp_file "$FS/f1" "$SCRATCH/f1" "f1 intact after a restart"
ok "umount" umount "$FS"
stop_daemon
is "$DAEMON_STATUS" "0" "clean exit"

done_testing
