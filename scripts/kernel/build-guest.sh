#!/bin/sh
# scripts/kernel/build-guest.sh CACHE_DIR: builds the QEMU guest used by test/kernel/ to drive the
# real Linux NBD client (nbd.ko + nbd-client) against a chard node.
#
# Produces CACHE_DIR/vmlinuz (+ CACHE_DIR/vmlinux, the same kernel uncompressed for QEMU's fast
# PVH boot, when xz is available) and CACHE_DIR/initramfs.gz (busybox-static, nbd/virtio-net/ext4 modules
# of Debian's linux-image-amd64, nbd-client, mke2fs, e2fsck and their shared libraries, /init and the
# shell library /lib/chard.sh) and CACHE_DIR/guest.env (KERNEL_VERSION=..., BUILD_KEY=...).
# The per-run guest script is NOT part of this image: the harness appends a tiny cpio holding
# /chard/script.sh (the kernel unpacks concatenated initramfs archives in order), so every run can
# use a different script without rebuilding anything.
#
# Idempotent: the image is rebuilt only when the kernel package version, this script or the host
# tools it copies changed (BUILD_KEY). Offline: when apt cannot resolve or download the kernel but a
# complete image is cached, the cached image is reused.
#
# Needs (Debian 12): busybox-static kmod cpio gzip e2fsprogs nbd-client dpkg apt util-linux (flock)
# xz-utils (optional, fast boot) (+ qemu-system-x86 to run).
set -eu

cache=${1:?usage: build-guest.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
log() { echo "build-guest: $*" >&2; }
# One builder at a time per cache (test files may call this concurrently); readers never see a
# partial image because the outputs are renamed into place.
exec 9>"$cache/.lock"
flock 9

# Everything copied from the host; the build key changes when any of them changes.
busybox=/bin/busybox
[ -x "$busybox" ] || busybox=/usr/bin/busybox
hostBins="/usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck"
for f in $busybox $hostBins; do
  [ -x "$f" ] || { log "missing $f (apt-get install -y --no-install-recommends busybox-static nbd-client e2fsprogs)"; exit 2; }
done
for c in depmod modprobe cpio gzip dpkg-deb apt-get apt-cache ldd; do
  command -v "$c" >/dev/null 2>&1 || { log "missing tool $c (apt-get install -y --no-install-recommends kmod cpio gzip)"; exit 2; }
done
if ! "$busybox" --list 2>/dev/null | grep -qx sh || ldd "$busybox" >/dev/null 2>&1; then
  log "$busybox is not a static busybox (apt-get install -y --no-install-recommends busybox-static)"; exit 2
fi

# Resolve the versioned kernel package behind the linux-image-amd64 metapackage.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1 || true)
kver=''
[ -n "$kpkg" ] && kver=$(apt-cache policy "$kpkg" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -n 1 || true)
selfSum=$(sha256sum "$0" | cut -c1-16)
toolSum=$(sha256sum $busybox $hostBins | sha256sum | cut -c1-16)
if [ -z "$kpkg" ] || [ -z "$kver" ] || [ "$kver" = "(none)" ]; then
  if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.gz" ] && [ -s "$cache/guest.env" ]; then
    log "cannot resolve linux-image-amd64 via apt; reusing cached image ($(cat "$cache/guest.env" | tr '\n' ' '))"
    exit 0
  fi
  log "cannot resolve linux-image-amd64 via apt (run apt-get update) and no cached image in $cache"; exit 3
fi
key="$kpkg=$kver;script=$selfSum;tools=$toolSum"
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.gz" ] && [ -f "$cache/guest.env" ] \
   && grep -qxF "BUILD_KEY=$key" "$cache/guest.env"; then
  log "up to date ($key)"
  exit 0
fi
log "building guest image: $key"

# 1. Kernel package (downloaded once per version into CACHE_DIR/debs).
mkdir -p "$cache/debs"
deb=$(ls "$cache/debs/${kpkg}_"*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ] || ! dpkg-deb -f "$deb" Version | grep -qxF "$kver"; then
  rm -f "$cache/debs/${kpkg}_"*.deb
  (cd "$cache/debs" && apt-get download "$kpkg=$kver" >&2 2>/dev/null) || (cd "$cache/debs" && apt-get download "$kpkg=$kver" >&2)
  deb=$(ls "$cache/debs/${kpkg}_"*.deb | head -n 1)
fi
work="$cache/work"
rm -rf "$work"
mkdir -p "$work/kernel"
dpkg-deb -x "$deb" "$work/kernel"
kdir=$(ls -d "$work/kernel/lib/modules/"*/ | head -n 1)
krel=$(basename "$kdir")
depmod -b "$work/kernel" "$krel"

# 2. Initramfs tree.
root="$work/root"
mkdir -p "$root/bin" "$root/sbin" "$root/lib/modules" "$root/lib64" "$root/proc" "$root/sys" "$root/dev" \
  "$root/mnt" "$root/tmp" "$root/chard" "$root/etc" "$root/run"
cp "$busybox" "$root/bin/busybox"
for app in $("$busybox" --list); do
  [ "$app" = busybox ] && continue
  ln -sf busybox "$root/bin/$app"
done

# Modules in dependency order (one --show-depends per module: further arguments would be parameters;
# -C /dev/null ignores the host's modprobe.d). Duplicates are dropped, first occurrence wins.
modlist="$root/lib/modules/load.list"
: > "$modlist"
for m in nbd virtio_pci virtio_net crc32c_generic ext4; do
  modprobe -C /dev/null -d "$work/kernel" -S "$krel" --show-depends "$m" | while read -r verb path _rest; do
    [ "$verb" = insmod ] || continue
    name=$(basename "$path")
    grep -qxF "$name" "$modlist" && continue
    cp "$path" "$root/lib/modules/$name"
    echo "$name" >> "$modlist"
  done
done
grep -qxF nbd.ko "$modlist" || { log "nbd.ko not found in $kpkg"; exit 4; }

# Host binaries plus every shared library ldd names (and the dynamic loader).
for b in $hostBins; do cp "$b" "$root/sbin/"; done
ln -sf mke2fs "$root/sbin/mkfs.ext4"
ln -sf e2fsck "$root/sbin/fsck.ext4"
for b in $hostBins; do
  ldd "$b" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# Loader search path: ldd names /lib/x86_64-linux-gnu (merged-/usr hosts may name /usr/lib/...).
echo "/lib/x86_64-linux-gnu" > "$root/etc/ld.so.conf"
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# e2fsprogs wants /etc/mtab and reads /etc/mke2fs.conf (defaults are built in when absent).
ln -sf /proc/mounts "$root/etc/mtab"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

# /lib/chard.sh: helpers for guest scripts (see test/kernel/guest.ts for the line protocol).
cat > "$root/lib/chard.sh" <<'LIB'
# /lib/chard.sh: sourced by /init before the per-run /chard/script.sh.
# Line protocol on the serial console (all lines start at column 0):
#   CHARD-RESULT key=value ...   one result record (values contain no spaces)
#   CHARD-IOERR  key=value ...   an I/O error seen by the guest (loud, also counted by the harness)
#   CHARD-LOG    text            free text
# Timestamps are /proc/uptime seconds (guest monotonic clock, 10 ms resolution).
chard_now() { read -r up _ < /proc/uptime; echo "$up"; }
chard_ms() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }
chard_result() { echo "CHARD-RESULT $*"; }
chard_log() { echo "CHARD-LOG $*"; }
# chard_step NAME CMD...: runs CMD, prints CHARD-RESULT step=NAME ok=0|1 rc=N ms=N; output goes to
# the console prefixed with "  NAME: ". Returns CMD's status.
chard_step() {
  _name=$1; shift
  _t0=$(chard_ms)
  "$@" > /tmp/step.out 2>&1
  _rc=$?
  _t1=$(chard_ms)
  # read -r || [ -n ]: a last line without a newline is still printed, and ends with one, so the
  # CHARD-RESULT line below always starts at column 0.
  while IFS= read -r _l || [ -n "$_l" ]; do echo "  $_name: $_l"; done < /tmp/step.out
  if [ $_rc -eq 0 ]; then _ok=1; else _ok=0; fi
  echo "CHARD-RESULT step=$_name ok=$_ok rc=$_rc ms=$((_t1 - _t0))"
  return $_rc
}
# chard_stop_watch: starts a background reader of the serial console; a line "stop" sent by the
# host (GuestControl.send('stop')) creates /chard/stop, which ends chard_writer's loop.
chard_stop_watch() {
  ( while read -r _line; do
      case "$_line" in *stop*) touch /chard/stop; echo "CHARD-LOG stop requested"; break ;; esac
    done ) < /dev/console &
}
# chard_writer DIR COUNT BYTES [SECONDS_MAX]: writes files of BYTES random bytes into DIR, each
# with fsync (dd conv=fsync), and prints one line per completed write:
#   CHARD-RESULT write=SEQ ok=1 t0=UPTIME t1=UPTIME ms=N
# and on a failed write (then keeps going):
#   CHARD-IOERR write=SEQ rc=N t0=UPTIME t1=UPTIME msg=...
# Stops after COUNT writes (0: no count limit), when /chard/stop exists, after SECONDS_MAX seconds
# of guest uptime (default 600), or after 20 failed writes in a row (the device is gone).
# Ends with CHARD-RESULT writer=done writes=N errors=N; returns 0 only if no write failed.
chard_writer() {
  _dir=$1; _count=$2; _bytes=$3; _secs=${4:-600}
  mkdir -p "$_dir"
  _seq=0; _errs=0; _consec=0
  _deadline=$(( $(chard_ms) + _secs * 1000 ))
  while [ "$_count" -eq 0 ] || [ "$_seq" -lt "$_count" ]; do
    [ -e /chard/stop ] && break
    [ "$(chard_ms)" -ge "$_deadline" ] && break
    _seq=$((_seq + 1))
    _t0=$(chard_now); _m0=$(chard_ms)
    if dd if=/dev/urandom of="$_dir/w$_seq" bs="$_bytes" count=1 conv=fsync 2>/tmp/dd.err; then
      _t1=$(chard_now); _m1=$(chard_ms)
      echo "CHARD-RESULT write=$_seq ok=1 t0=$_t0 t1=$_t1 ms=$((_m1 - _m0))"
      _consec=0
    else
      _rc=$?
      _t1=$(chard_now)
      _errs=$((_errs + 1)); _consec=$((_consec + 1))
      echo "CHARD-IOERR write=$_seq rc=$_rc t0=$_t0 t1=$_t1 msg=$(tr -s ' \n' '__' < /tmp/dd.err)"
      [ "$_consec" -ge 20 ] && break
      sleep 0.2
    fi
  done
  echo "CHARD-RESULT writer=done writes=$_seq errors=$_errs"
  [ "$_errs" -eq 0 ]
}
LIB

cat > "$root/init" <<'INIT'
#!/bin/sh
# /init of the chard kernel-test guest: mount pseudo filesystems, load modules, bring up eth0
# (QEMU user networking: 10.0.2.15/24, gateway 10.0.2.2 = the host namespace's 127.0.0.1), run
# /chard/script.sh, report, power off. Never returns: a kernel panic would hide the results.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts; mount -t tmpfs tmpfs /tmp
. /lib/chard.sh
echo "CHARD-BOOT kernel=$(uname -r) uptime=$(chard_now)"
modsOk=1
while read -r m; do
  if ! insmod "/lib/modules/$m" 2>/tmp/insmod.err; then
    # crc32c-intel needs SSE4.2 (absent on some TCG CPU models); crc32c_generic covers it.
    case "$m" in crc32c-intel.ko) ;; *) modsOk=0 ;; esac
    echo "CHARD-LOG insmod $m failed: $(cat /tmp/insmod.err)"
  fi
done < /lib/modules/load.list
ip link set lo up
netOk=0
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ -e /sys/class/net/eth0 ] && break
  sleep 0.2
done
if ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; then netOk=1; fi
echo "CHARD-READY modules=$modsOk net=$netOk uptime=$(chard_now)"
chard_result boot=done modules=$modsOk net=$netOk uptime=$(chard_now)
if [ -f /chard/script.sh ]; then
  sh /chard/script.sh
  rc=$?
else
  echo "CHARD-LOG no /chard/script.sh"
  rc=127
fi
sync
echo "CHARD-DONE rc=$rc uptime=$(chard_now)"
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
INIT
chmod 755 "$root/init"

# 3. Pack (new files replace old ones atomically so a concurrent run never sees a half image).
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 > "$cache/initramfs.gz.tmp"
cp "$work/kernel/boot/vmlinuz-$krel" "$cache/vmlinuz.tmp"
# Uncompressed PVH kernel: QEMU boots an ELF vmlinux with a PVH note directly, which skips the
# in-guest xz decompression of the bzImage (4-8 s under TCG). Optional: without xz, or for a
# kernel built without CONFIG_PVH, only vmlinuz is provided and the harness boots that.
rm -f "$cache/vmlinux" "$cache/vmlinux.tmp"
if grep -qx 'CONFIG_PVH=y' "$work/kernel/boot/config-$krel" && command -v xz >/dev/null 2>&1; then
  off=$(LC_ALL=C grep -abo -P '\xfd7zXZ\x00' "$cache/vmlinuz.tmp" | head -n 1 | cut -d: -f1 || true)
  if [ -n "$off" ]; then
    # xz stops at the end of its stream and complains about the bzImage tail: ignore its status.
    tail -c +$((off + 1)) "$cache/vmlinuz.tmp" | xz -dcq > "$cache/vmlinux.tmp" 2>/dev/null || true
    if [ "$(head -c 4 "$cache/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
      mv "$cache/vmlinux.tmp" "$cache/vmlinux"
    else
      log "could not extract an ELF vmlinux; the guest boots the compressed vmlinuz"
      rm -f "$cache/vmlinux.tmp"
    fi
  fi
fi
mv "$cache/initramfs.gz.tmp" "$cache/initramfs.gz"
mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
printf 'KERNEL_VERSION=%s\nKERNEL_PACKAGE=%s=%s\nBUILD_KEY=%s\n' "$krel" "$kpkg" "$kver" "$key" > "$cache/guest.env.tmp"
mv "$cache/guest.env.tmp" "$cache/guest.env"
rm -rf "$work"
log "built $cache/vmlinuz and $cache/initramfs.gz ($(du -h "$cache/initramfs.gz" | cut -f1)) for $krel"
