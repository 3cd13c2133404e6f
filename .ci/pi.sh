#!/usr/bin/env bash
# An emulated Raspberry Pi OS job: ARCH is arm64 (64-bit Pi OS) or armhf (32-bit Pi OS, armv7l).
#
#   bash .ci/pi.sh arm64|armhf [WORKDIR]
#
# 1. A Debian bookworm root filesystem (the base of Raspberry Pi OS 12) from extracted
#    packages: mmdebstrap --variant=extract runs no maintainer script, so nothing is emulated
#    while it is built (about 20 s instead of 4-5 min); the few things those scripts would
#    have done for us are done below (BLAS alternatives, CA certificates).
#    Python, numpy, pyzmq, zstandard and msgpack are Debian's own (python3-*): the project's
#    minimums are what bookworm ships, and this job is where that is tested.
# 2. Inside it, under qemu-user (binfmt_misc): .ci/pi-inside.sh builds the wheel from source
#    as `pip install .` does, repairs and checks it with auditwheel, installs it in a venv
#    (with the network), then runs `edgesdk demo`, the benches' --quick and the Pi test
#    suite against the installed wheel (in network, PID and mount namespaces of its own).
# The repaired wheel is left in WORKDIR/wheelhouse.
#   bash .ci/pi.sh setup     (the host tools only: run it once before jobs run side by side)
set -euo pipefail

# The host's tools: mmdebstrap, qemu-user-static and its binfmt_misc registrations. qemu runs
# the ARM binaries in the chroot through binfmt_misc; the "F" flag (qemu-user-static
# registers with it) keeps the interpreter open, so it needs no copy inside the root.
setup() {
  local need=()
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  [ -x /usr/bin/qemu-aarch64-static ] && [ -x /usr/bin/qemu-arm-static ] \
    || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
  command -v ip >/dev/null || need+=(iproute2)
  if [ "${#need[@]}" -gt 0 ]; then
    echo "pi.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  mountpoint -q /proc/sys/fs/binfmt_misc \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  for q in aarch64 arm; do
    # a registration without "F" (qemu-user-binfmt's) cannot run inside a chroot
    if ! grep -q "^flags: .*F" "/proc/sys/fs/binfmt_misc/qemu-$q" 2>/dev/null; then
      if [ -e "/proc/sys/fs/binfmt_misc/qemu-$q" ]; then
        echo "pi.sh: replacing the host's qemu-$q registration (no F flag) with qemu-user-static's"
        echo -1 >"/proc/sys/fs/binfmt_misc/qemu-$q"
      fi
      update-binfmts --enable "qemu-$q" 2>/dev/null || update-binfmts --import "qemu-$q"
    fi
  done
}

arch=${1:?usage: pi.sh arm64|armhf|setup [WORKDIR]}
case "$arch" in
  setup) setup; exit 0 ;;
  arm64) triplet=aarch64-linux-gnu ;;
  armhf) triplet=arm-linux-gnueabihf ;;
  *) echo "pi.sh: ARCH is arm64, armhf or setup, got '$arch'" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-/tmp/edgesdk-pi-$arch}
root=$work/rootfs
mirror=${PI_MIRROR:-http://deb.debian.org/debian}
setup

unmount() {
  for m in "$root/dev/shm" "$root/sys" "$root/proc"; do
    if mountpoint -q "$m"; then umount "$m"; fi
  done
}
trap unmount EXIT
unmount
rm -rf "$work"
mkdir -p "$work"

t0=$SECONDS
pkgs=dash,bash,coreutils,grep,sed,python3,python3-venv,python3-numpy,python3-zmq
pkgs+=,python3-zstandard,python3-msgpack,python3-dev,gcc,libc6-dev,cmake,make
mmdebstrap --quiet --variant=extract --arch="$arch" --include="$pkgs" bookworm "$root" "$mirror"
lib=$root/usr/lib/$triplet
ln -sf blas/libblas.so.3 "$lib/libblas.so.3"       # update-alternatives, done by hand
ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
mkdir -p "$root/etc/ssl/certs" "$root/proc" "$root/sys" "$root/dev/shm"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"  # for pip, as on a Pi
cp /etc/resolv.conf "$root/etc/"
echo "pi.sh [$arch]: root filesystem in $((SECONDS - t0)) s"

# The checkout as pip would see it (tracked files, uncommitted changes included).
mkdir "$root/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | tar -c --null --ignore-failed-read -T - -f -) | tar -x -C "$root/src"
cp "$repo/.ci/pi-inside.sh" "$root/pi-inside.sh"

inside() {  # PHASE: run .ci/pi-inside.sh PHASE in the root, as a clean login would
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    CI=1 EDGESDK_NATIVE=1 /bin/bash /pi-inside.sh "$1" "$arch"
}
export -f inside
export root arch

# Install, with the host's network. proc, sysfs and tmpfs are fresh mounts, not binds of
# the host's /dev or /tmp, so that removing the root can never reach the host's files
# (root inside the chroot is still the host's root: this is a build sandbox, not a jail).
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o size=256m tmpfs "$root/dev/shm"   # multiprocessing's semaphores
inside install
# Check, in namespaces of its own: a network with only its loopback (the arm64 and armhf
# jobs run side by side and pick free ports, which must not collide), a PID namespace
# (whatever the tests leave running ends with it) and mounts that vanish with it.
unshare --net --pid --fork --mount --propagation private bash -c '
  set -euo pipefail
  ip link set lo up
  mount -t proc proc "$root/proc"
  mount -t tmpfs -o size=256m tmpfs "$root/dev/shm"
  inside check'
mkdir -p "$work/wheelhouse"
cp "$root"/wheelhouse/*.whl "$work/wheelhouse/"
echo "pi.sh [$arch]: passed in $((SECONDS - t0)) s; wheel: $(ls "$work/wheelhouse")"
