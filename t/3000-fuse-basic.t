#!/bin/bash
# SPDX-License-Identifier: MIT
# layerfs basics: the directory of disks, attributes, read-only disks, writes past the end,
# truncate/chmod refused, statfs, a regular-file mountpoint, daemonizing, fusermount3 -u.
. "$(dirname "$0")/tap.sh"
require_root
require_fuse
require_cmd python3 stat

MNT=$SCRATCH/mnt
mkdir "$MNT"
truncate -s 8M "$SCRATCH/a.img"
truncate -s 3000000 "$SCRATCH/b.img"
head -c 1M /dev/urandom >"$SCRATCH/ro.img"

ok "help exits 0" "$LAYERFS" --help
like "$("$LAYERFS" --version)" "^layerfs [0-9]" "--version prints the version"

start_daemon "$MNT" --disk "a=$SCRATCH/a.img" --disk "b=$SCRATCH/b.img" \
    --disk "ro=path=$SCRATCH/ro.img,read-only=true" || exit 1

is "$(ls "$MNT" | tr '\n' ' ')" "a b ro " "readdir lists one file per disk"
opts=$(awk -v m="$MNT" '$2 == m { print $4 }' /proc/mounts)
like "$opts" "default_permissions" "mounted with default_permissions ($opts)"
ok "no allow_other unless asked" sh -c "! printf '%s' '$opts' | grep -q allow_other"
is "$(stat -c '%F %a %s %u %g' "$MNT/a")" "regular file 600 8388608 $(id -u) $(id -g)" \
    "disk a: regular file, 0600, disk size, owned by the mounting user"
is "$(stat -c '%s' "$MNT/b")" "3000000" "disk b: size need not be a multiple of 512"
is "$(stat -c '%F %a %s' "$MNT/ro")" "regular file 400 1048576" "read-only disk: mode 0400"
like "$(stat -c '%o' "$MNT/a")" "^[0-9]+$" "st_blksize reported"
is "$(stat -c '%b' "$MNT/a")" "0" "st_blocks: a disk that is one hole holds nothing"
is "$(stat -c '%b' "$MNT/ro")" "2048" "st_blocks counts 512-byte units of the data held"
is "$(stat -c '%F' "$MNT")" "directory" "the mountpoint is a directory"
not_ok_cmd "lookup of a missing name fails" stat "$MNT/nope"
like "$(touch "$MNT/new" 2>&1)" "Operation not permitted" "cannot create files: EPERM"
like "$(rm -f "$MNT/a" 2>&1)" "Operation not permitted" "cannot remove a disk: EPERM"
like "$(mv "$MNT/a" "$MNT/z" 2>&1)" "Operation not permitted" "cannot rename a disk: EPERM"
like "$(mkdir "$MNT/dir" 2>&1)" "Operation not permitted" "cannot make directories: EPERM"

# Reads and writes round-trip; the backing file sees them.
head -c 100000 /dev/urandom >"$SCRATCH/data"
ok "write 100000 bytes at offset 12345" dd if="$SCRATCH/data" of="$MNT/a" bs=100000 \
    seek=12345 oflag=seek_bytes conv=notrunc status=none
is "$(dd if="$MNT/a" bs=100000 skip=12345 iflag=skip_bytes count=1 status=none | md5sum)" \
    "$(md5sum <"$SCRATCH/data")" "read back through layerfs"
is "$(dd if="$SCRATCH/a.img" bs=100000 skip=12345 iflag=skip_bytes count=1 status=none | md5sum)" \
    "$(md5sum <"$SCRATCH/data")" "backing file holds the data"

# The end of the disk: short write, then ENOSPC; reads stop at the end.
out=$(python3 - "$MNT/b" <<'PY' 2>&1
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDWR)
n = os.pwrite(fd, b"x" * 1000, 3000000 - 100)
print("short", n)
try:
    os.pwrite(fd, b"y", 3000000)
    print("no error")
except OSError as e:
    print(errno.errorcode[e.errno])
print("read", len(os.pread(fd, 4096, 3000000 - 10)))
PY
)
is "$(echo $out)" "short 100 ENOSPC read 10" "a write crossing the end is short, past it ENOSPC"
not_ok_cmd "dd past the end fails" dd if=/dev/zero of="$MNT/b" bs=4096 seek=1000 count=1 \
    conv=notrunc status=none
is "$(stat -c %s "$SCRATCH/b.img")" "3000000" "the backing file did not grow"

# Size, mode and owner are fixed.
ok "truncate to the same size succeeds" truncate -s 8M "$MNT/a"
not_ok_cmd "truncate to another size fails" truncate -s 4M "$MNT/a"
not_ok_cmd "truncate to 0 fails" truncate -s 0 "$MNT/a"
is "$(stat -c %s "$MNT/a")" "8388608" "size unchanged"
not_ok_cmd "chmod is refused" chmod 0644 "$MNT/a"
ok "chmod to the same mode is fine" chmod 0600 "$MNT/a"
ok "touch (timestamps) is accepted" touch "$MNT/a"
ok "O_TRUNC is ignored, as on a block device" sh -c "printf abc >'$MNT/a'"
is "$(stat -c %s "$MNT/a"; head -c 3 "$MNT/a")" "8388608
abc" "size kept and data written"

# Read-only disk.
not_ok_cmd "read-only disk: open for writing fails" sh -c "printf x 1<>'$MNT/ro'"
err=$(python3 -c "
import os,errno
try: os.open('$MNT/ro', os.O_WRONLY)
except OSError as e: print(errno.errorcode[e.errno])" 2>&1)
like "$err" "^(EROFS|EACCES)$" "read-only disk: EROFS or EACCES"
cmp_file "$MNT/ro" "$SCRATCH/ro.img" "read-only disk reads its data"

like "$(stat -f -c '%b %S' "$MNT")" "^[0-9]+ 4096$" "statfs answers"
ok "fsync on the directory" python3 -c "import os; fd=os.open('$MNT', os.O_RDONLY); os.fsync(fd)"

# A second daemon on the busy mountpoint refuses before mounting.
"$LAYERFS" -f --disk "x=$SCRATCH/a.img" "$MNT" 2>"$SCRATCH/busy.err"
is "$?" "2" "mounting on a busy mountpoint: exit 2"
like "$(cat "$SCRATCH/busy.err")" "^layerfs: .*already a mount point" "and says why"

stop_daemon
is "$DAEMON_STATUS" "0" "SIGTERM: exit status 0"
ok "mountpoint is gone" sh -c "! mountpoint -q '$MNT'"
ok "pidfile removed at exit" test ! -e "$SCRATCH/layerfs.pid"

# A regular file as the mountpoint: the file itself is the disk.
: >"$SCRATCH/file-mnt"
start_daemon "$SCRATCH/file-mnt" --disk "only=$SCRATCH/a.img" || exit 1
is "$(stat -c '%F %a %s' "$SCRATCH/file-mnt")" "regular file 600 8388608" \
    "file mountpoint shows the disk"
ok "write through the file mountpoint" dd if="$SCRATCH/data" of="$SCRATCH/file-mnt" bs=4096 \
    seek=7 conv=notrunc status=none
is "$(dd if="$SCRATCH/a.img" bs=4096 skip=7 count=25 status=none | head -c 100000 | md5sum)" \
    "$(md5sum <"$SCRATCH/data")" "data reached the backing file"
stop_daemon
is "$DAEMON_STATUS" "0" "file mountpoint: clean exit"
is "$(stat -c %s "$SCRATCH/file-mnt")" "0" "the file mountpoint is back to itself"

"$LAYERFS" -f --disk "a=$SCRATCH/a.img" --disk "b=$SCRATCH/b.img" "$SCRATCH/file-mnt" \
    2>"$SCRATCH/two.err"
is "$?" "2" "two disks on a file mountpoint: exit 2"
like "$(cat "$SCRATCH/two.err")" "exactly one disk" "and says why"

# A ram layer alone: its own size key sizes it.
start_daemon "$SCRATCH/file-mnt" --disk "r=format=ram,size=3M" || exit 1
is "$(stat -c %s "$SCRATCH/file-mnt")" "3145728" "a lone ram layer has its size key's size"
dd if="$SCRATCH/data" of="$SCRATCH/file-mnt" bs=4096 seek=5 conv=notrunc status=none
is "$(dd if="$SCRATCH/file-mnt" bs=4096 skip=5 count=25 status=none | head -c 100000 | md5sum)" \
    "$(md5sum <"$SCRATCH/data")" "the lone ram layer reads back what was written"
stop_daemon

# The built-in demo disk, and -o passed through.
start_daemon "$MNT" --demo -o allow_other || exit 1
like "$(awk -v m="$MNT" '$2 == m { print $4 }' /proc/mounts)" "allow_other" \
    "-o allow_other reaches the mount"
is "$(stat -c '%s' "$MNT/demo")" "268435456" "--demo: a 256M disk named demo"
is "$(head -n 1 "$MNT/demo" | tr -d '\0')" "layerfs demo sector 0" "--demo: the pattern in sector 0"
is "$(dd if="$MNT/demo" bs=512 skip=2047 count=1 status=none | head -n 1 | tr -d '\377')" \
    "layerfs demo sector 2047" "--demo: the pattern in the last sector of the first MiB"
is "$(dd if="$MNT/demo" bs=512 skip=2048 count=1 status=none | tr -d '\0' | wc -c)" "0" \
    "--demo: zeros after the first MiB"
ok "--demo: writable" dd if=/dev/urandom of="$MNT/demo" bs=4096 count=4 seek=1000 conv=notrunc \
    status=none
stop_daemon
is "$DAEMON_STATUS" "0" "--demo: clean exit"

# --read-only makes every disk read-only; the other options are taken.
start_daemon "$MNT" --read-only -t 3 --bounce-budget 1M --cache=page -v \
    --disk "a=$SCRATCH/a.img" || exit 1
is "$(stat -c '%a' "$MNT/a")" "400" "--read-only: mode 0400"
not_ok_cmd "--read-only: writes refused" dd if=/dev/zero of="$MNT/a" bs=512 count=1 \
    conv=notrunc status=none
ok "--read-only: reads work" dd if="$MNT/a" of=/dev/null bs=1M status=none
stop_daemon
is "$DAEMON_STATUS" "0" "--read-only: clean exit"
like "$(cat "$SCRATCH/layerfs.log")" "serving 1 disk\(s\) .* with 3 I/O thread" "-v logs the setup"

# Without -f: the parent exits 0 once the mount serves; the pidfile names the daemon.
"$LAYERFS" --pidfile "$SCRATCH/bg.pid" --disk "a=$SCRATCH/a.img" "$MNT"
is "$?" "0" "daemonized start returns 0"
on_exit "fusermount3 -u -z '$MNT'"
ok "the mount serves when the parent has exited" test -s "$MNT/a"
pid=$(cat "$SCRATCH/bg.pid" 2>/dev/null)
ok "the pidfile names a live process" kill -0 "$pid"
# fusermount3 -u: the daemon notices, flushes, closes and exits.
ok "fusermount3 -u" fusermount3 -u "$MNT"
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
ok "daemon exited after fusermount3 -u" sh -c "! kill -0 $pid 2>/dev/null"
ok "its pidfile is gone" test ! -e "$SCRATCH/bg.pid"

done_testing
