#!/bin/busybox sh
# /init of the meshroute test guest (busybox, in the initramfs built by
# tests/harness/qemu_guest.py). Loads the listed modules, mounts the host's
# folders shared over 9p under a tmpfs root, chroots into it to run
# /mnt/results/command.sh and prints the verdict line the host waits for.
# Whatever happens, it ends with a sysrq power-off (or a panic, which
# -no-reboot also turns into QEMU exiting).

/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null

mark() { echo "MESHROUTE-QEMU-MARK $1 $(cut -d' ' -f1 /proc/uptime)"; }
finish() {
  echo "MESHROUTE-QEMU-EXIT=$1"
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
  exit "$1"
}
mark init

for m in $(cat /modules.order); do
  insmod "/lib/modules/$m.ko" || { echo "MESHROUTE-QEMU-ERROR insmod $m failed"; finish 125; }
done
mark modules

# The guest's own loopback (etcd and the nodes' HTTP live there in the lab).
ip link set lo up || { echo "MESHROUTE-QEMU-ERROR cannot bring lo up"; finish 125; }

# meshroute.share=TAG:PATH (read-only, mounted at the same path) and
# meshroute.results=TAG (writable, mounted at /mnt/results).
shares=""
results=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    meshroute.share=*) shares="$shares ${arg#meshroute.share=}" ;;
    meshroute.results=*) results="${arg#meshroute.results=}" ;;
  esac
done

R=/newroot
mount -t tmpfs -o mode=755 root "$R" || finish 125
cd "$R" || finish 125
mkdir -p proc sys dev run tmp var/tmp root mnt/results usr
chmod 1777 tmp var/tmp
ln -s usr/bin bin
ln -s usr/sbin sbin
ln -s usr/lib lib
ln -s usr/lib64 lib64
ln -s ../run var/run
cd /

opts=trans=virtio,version=9p2000.L,msize=262144
for s in $shares; do
  tag="${s%%:*}"
  path="${s#*:}"
  mkdir -p "$R$path"
  mount -t 9p -o "$opts,cache=loose,ro" "$tag" "$R$path" \
    || { echo "MESHROUTE-QEMU-ERROR cannot mount $tag at $path"; finish 125; }
done
mount -t 9p -o "$opts" "$results" "$R/mnt/results" \
  || { echo "MESHROUTE-QEMU-ERROR cannot mount results share"; finish 125; }

mount -t proc proc "$R/proc"
mount -t sysfs sys "$R/sys"
mount -t devtmpfs dev "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
mount -t tmpfs -o mode=755 run "$R/run"
mark mounted

echo "MESHROUTE-QEMU-BEGIN"
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root LANG=C.UTF-8 \
  MESHROUTE_IN_QEMU_GUEST=1 PYTHONDONTWRITEBYTECODE=1 TERM=dumb NO_COLOR=1 \
  chroot "$R" /bin/sh /mnt/results/command.sh </dev/null 2>&1
rc=$?
echo "MESHROUTE-QEMU-END"
mark done
finish "$rc"
