#!/bin/bash
# SPDX-License-Identifier: MIT
# The virtio-blk-vfio-pci driver inside a QEMU guest (TCG, emulated intel-iommu, virtio-blk-pci
# devices with iommu_platform=on): the guest binds them to vfio-pci, runs t/bin/vblk-io (random
# odd I/O from 3 loops on 2 queues against a model; 4096-byte blocks on the second device),
# then layerfs with writes and reads through the exposed file, and reports TAP on the serial
# console; the host then checks the image files against the guest's view byte for byte (by
# SHA-256).  See shared/PLATFORM.md.  Needs qemu-system-x86, a distribution kernel with the
# vfio modules (linux-image-cloud-amd64), busybox-static and cpio.
. "$(dirname "$0")/tap.sh"

require_cmd qemu-system-x86_64 busybox cpio sha256sum ldd
VBLK=$BUILDDIR/t/bin/vblk-io
[ -x "$VBLK" ] || skip_all "t/bin/vblk-io not built (make check builds it)"
[ -x "$LAYERFS" ] || skip_all "layerfs not built"
ldd "$(command -v busybox)" >/dev/null 2>&1 &&
    skip_all "busybox is dynamically linked (install busybox-static)"

KVER=
for k in /boot/vmlinuz-*; do
    v=${k#/boot/vmlinuz-}
    [ -e "/lib/modules/$v/kernel/drivers/vfio/pci/vfio-pci.ko" ] ||
        [ -e "/lib/modules/$v/kernel/drivers/vfio/pci/vfio-pci.ko.xz" ] && KVER=$v
done
[ -n "$KVER" ] || skip_all "no kernel in /boot with vfio-pci modules (linux-image-cloud-amd64)"
VMLINUZ=/boot/vmlinuz-$KVER

SIZE=$((32 << 20))
IMG=$SCRATCH/disk.img
IMG4K=$SCRATCH/disk4k.img
ROOT=$SCRATCH/initrd
head -c $SIZE /dev/urandom >"$IMG"
head -c $SIZE /dev/urandom >"$IMG4K"

# ---- the guest's initramfs --------------------------------------------------------------
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,mnt,lib/modules,lib64,lib/x86_64-linux-gnu,etc}
cp "$(command -v busybox)" "$ROOT/bin/busybox"
copy_bin() {
    cp "$1" "$ROOT/bin/"
    ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}
copy_bin "$VBLK"
copy_bin "$LAYERFS"
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci fuse; do
    f=$(find "/lib/modules/$KVER/kernel" -name "$m.ko*" | head -n 1)
    [ -n "$f" ] || skip_all "module $m missing for $KVER"
    case $f in
        *.xz) xz -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$ROOT/lib/modules/$m.ko" ;;
        *) cp "$f" "$ROOT/lib/modules/$m.ko" ;;
    esac
done
head -c 1000000 /dev/urandom >"$ROOT/src"
touch "$ROOT/etc/mtab"

cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
res() { if [ "$1" = 0 ]; then echo "GUEST ok - $2"; else echo "GUEST not ok - $2"; fi; }
run() { # run DESC CMD...: a TAP line, the output as comments
    d=$1; shift
    "$@" >/tmp/out 2>&1; rc=$?
    sed 's/^/GUEST # /' /tmp/out
    res $rc "$d"
}
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci fuse; do
    insmod /lib/modules/$m.ko || echo "GUEST # insmod $m failed"
done
devs=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1042 ] && devs="$devs ${d##*/}"
done
for d in $devs; do
    echo vfio-pci >/sys/bus/pci/devices/$d/driver_override
    echo $d >/sys/bus/pci/drivers_probe
    grp=$(readlink /sys/bus/pci/devices/$d/iommu_group)
    [ -c /dev/vfio/${grp##*/} ]; res $? "virtio-blk $d bound to vfio-pci, /dev/vfio/${grp##*/}"
done
set -- $devs
dev=$1 dev4k=$2

vblk-io --driver virtio-blk-vfio-pci --mode open 0000:00:00.0 >/tmp/out 2>&1
grep -q "not bound to vfio-pci" /tmp/out; res $? "a device not bound to vfio-pci: clear error"
sed 's/^/GUEST # /' /tmp/out

vblk-io --driver virtio-blk-vfio-pci --mode open --num-queues 9 $dev >/tmp/out 2>&1
grep -q "num-queues 9: the device has only 2" /tmp/out
res $? "too many queues: clear error after a partial setup (the device is reset)"
sed 's/^/GUEST # /' /tmp/out

# An unprivileged user with a small RLIMIT_MEMLOCK: the DMA mapping is refused, clearly.
echo "root:x:0:0::/:/bin/sh" >/etc/passwd
echo "nobody:x:65534:65534::/tmp:/bin/sh" >>/etc/passwd
grp=$(readlink /sys/bus/pci/devices/$dev/iommu_group)
chmod 666 /dev/vfio/vfio /dev/vfio/${grp##*/}
su nobody -c "ulimit -l 64; vblk-io --driver virtio-blk-vfio-pci --mode open $dev" >/tmp/out 2>&1
grep -q "IOMMU refused to map.*RLIMIT_MEMLOCK" /tmp/out
res $? "DMA mapping over RLIMIT_MEMLOCK: clear error"
sed 's/^/GUEST # /' /tmp/out
chmod 600 /dev/vfio/vfio /dev/vfio/${grp##*/}

run "vblk-io: 3 loops on 2 queues, random odd I/O checked against a model" \
    vblk-io --driver virtio-blk-vfio-pci --mode io --blk 512 --loops 3 --ops 120 \
    --num-queues 2 --sha256 --timeout 600 $dev

# Zero copy: blockcore's I/O buffer arenas are DMA-mapped too (before the 4096-byte run,
# which learns what this leaves on the device).
run "vblk-io: I/O in blockcore's buffers reaches the device without a copy" \
    vblk-io --driver virtio-blk-vfio-pci --mode zc --blk 4096 --num-queues 1 $dev4k
LAYERFS_BUF_POOL=0 vblk-io --driver virtio-blk-vfio-pci --mode zc --blk 4096 --num-queues 1 \
    $dev4k >/tmp/out 2>&1
grep -q "aligned I/O in arena memory was copied" /tmp/out
res $? "vblk-io: without arenas the same I/O is copied, and the check says so"

run "vblk-io on 4096-byte blocks: 2 loops sharing 1 queue of 16" \
    vblk-io --driver virtio-blk-vfio-pci --mode io --blk 4096 --loops 2 --ops 100 \
    --num-queues 1 --queue-size 16 --sha256 --timeout 600 $dev4k
echo "GUEST sum-4k $(sed -n 's/^sha256 //p' /tmp/out)"

# layerfs on the device: odd and concurrent sector-sharing writes through the file.
layerfs -f -v --pidfile /tmp/pid \
    --disk "d=driver=virtio-blk-vfio-pci,path=$(echo $dev | sed 's/:/\\:/g')" /mnt >/tmp/lf.log 2>&1 &
lf=$!
i=0; while [ ! -s /tmp/pid ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -s /tmp/pid ] && [ -e /mnt/d ]; mounted=$?
res $mounted "layerfs mounts the device"; sed 's/^/GUEST # /' /tmp/lf.log
[ $mounted = 0 ] || { echo "GUEST done"; poweroff -f; }
cp /mnt/d /tmp/ref
echo "GUEST before-fuse $(sha256sum </tmp/ref | cut -d' ' -f1)"
w() { dd if=/src conv=notrunc "$@" 2>/dev/null; }
for f in /mnt/d /tmp/ref; do
    w of=$f bs=65519 count=7
    w of=$f bs=1 count=1 seek=4095 skip=3
    w of=$f bs=1 count=1 seek=511 skip=9
    w of=$f bs=1000 count=3 seek=2049 skip=1
    w of=$f bs=100 count=1 seek=LAST_CELL
    pids=
    for k in 0 1 2; do
        (for c in 0 3 6 9 12 15 18 21 24 27; do
            w of=$f bs=37 count=1 seek=$((3000 + c + k)) skip=$((c + k))
        done) &
        pids="$pids $!"
    done
    wait $pids
done
cmp /mnt/d /tmp/ref; res $? "layerfs: odd and concurrent writes read back"
sync
kill -TERM $lf; wait $lf; res $? "layerfs exits cleanly"
grep 'zero-copy' /tmp/lf.log | sed 's/^/GUEST # /'
grep -q 'zero-copy): [1-9][0-9]* requests, [0-9]* bytes; copied: 0 requests' /tmp/lf.log
res $? "layerfs: FUSE reads and writes reached the device in place, none copied"
echo "GUEST after-fuse $(sha256sum </tmp/ref | cut -d' ' -f1)"
echo "GUEST done"
poweroff -f
EOF
sed -i "s/LAST_CELL/$(( (SIZE - 100) / 100 ))/" "$ROOT/init"
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet) >"$SCRATCH/initrd.cpio"

# ---- boot -------------------------------------------------------------------------------
LOG=$SCRATCH/serial.log
timeout 900 qemu-system-x86_64 -accel tcg -machine q35,kernel-irqchip=split -cpu max -smp 2 \
    -m 512 -nographic -no-reboot -device intel-iommu,intremap=on,caching-mode=on \
    -kernel "$VMLINUZ" -initrd "$SCRATCH/initrd.cpio" \
    -append "console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=3" \
    -device pcie-root-port,id=rp1,chassis=1 \
    -drive "file=$IMG,if=none,id=d0,format=raw,cache=none,discard=unmap" \
    -device virtio-blk-pci,bus=rp1,drive=d0,disable-legacy=on,iommu_platform=on,num-queues=2 \
    -device pcie-root-port,id=rp2,chassis=2 \
    -drive "file=$IMG4K,if=none,id=d1,format=raw,cache=none,discard=unmap" \
    -device virtio-blk-pci,bus=rp2,drive=d1,disable-legacy=on,iommu_platform=on,num-queues=1,logical_block_size=4096,physical_block_size=4096 \
    -net none </dev/null >"$LOG" 2>&1
rc=$?
tr -d '\r' <"$LOG" >"$LOG.txt"
is "$rc" 0 "the guest ran and powered off"
grep -q "^GUEST done" "$LOG.txt" || { diag "guest console:"; tail -n 40 "$LOG.txt" | sed 's/^/#   /'; }

while IFS= read -r line; do
    case $line in
        "GUEST ok - "*) _t_result 0 "guest: ${line#GUEST ok - }" ;;
        "GUEST not ok - "*) _t_result 1 "guest: ${line#GUEST not ok - }" ;;
        "GUEST # "*) echo "# ${line#GUEST # }" ;;
    esac
done <"$LOG.txt"

vblk_sum=$(sed -n 's/^GUEST # sha256 //p' "$LOG.txt" | head -n 1)
sum4k=$(sed -n 's/^GUEST sum-4k //p' "$LOG.txt")
before=$(sed -n 's/^GUEST before-fuse //p' "$LOG.txt")
after=$(sed -n 's/^GUEST after-fuse //p' "$LOG.txt")
like "$vblk_sum" '^[0-9a-f]{64}$' "the guest reported the device contents after vblk-io"
is "$before" "$vblk_sum" "layerfs saw what vblk-io left on the device"
is "$(sha256sum <"$IMG" | cut -d' ' -f1)" "$after" \
    "the image on the host is byte for byte what the guest wrote"
is "$(sha256sum <"$IMG4K" | cut -d' ' -f1)" "$sum4k" \
    "4096-byte device: the host image is what the guest read back"

done_testing
