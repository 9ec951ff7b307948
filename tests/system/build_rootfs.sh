#!/bin/sh
# Build (once) a Debian 12 bookworm root filesystem for the system tests, cached in build/rootfs/ARCH.
#     tests/system/build_rootfs.sh amd64|arm64 [DEST]
# The cache is reused while its stamp (this script's package list and suite) matches; a half-built tree
# (interrupted debootstrap) has no stamp and is rebuilt from scratch.
set -eu

ARCH=${1:?usage: build_rootfs.sh amd64|arm64 [DEST]}
HERE=$(cd "$(dirname "$0")" && pwd)
DEST=${2:-$HERE/../../build/rootfs/$ARCH}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What a Pi owner's Raspberry Pi OS Lite already has (systemd, python3, git for the clone) plus what
# install-pi.sh would apt-get anyway: preinstalled so each test run does not fetch them again.
PACKAGES=systemd,systemd-sysv,dbus,procps,ca-certificates,git,python3,python3-venv,python3-dev,build-essential,libffi-dev,mosquitto-clients
STAMP="$SUITE $ARCH $PACKAGES"

if [ -f "$DEST/.bedtime-rootfs" ] && [ "$(cat "$DEST/.bedtime-rootfs")" = "$STAMP" ]; then
    echo "rootfs $ARCH: cached in $DEST"
    exit 0
fi

if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
    # Foreign architecture: the second stage runs under qemu-user-static via binfmt_misc. The F flag
    # (Debian's qemu-user-static registers with it) keeps the interpreter usable inside the chroot/container.
    [ -f /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    QEMU=qemu-aarch64
    [ "$ARCH" = arm64 ] || { echo "build_rootfs.sh: unsupported arch $ARCH" >&2; exit 2; }
    if [ ! -f /proc/sys/fs/binfmt_misc/$QEMU ]; then
        if command -v update-binfmts >/dev/null 2>&1; then
            update-binfmts --enable $QEMU 2>/dev/null || true
        fi
        if [ ! -f /proc/sys/fs/binfmt_misc/$QEMU ] && [ -f /usr/lib/binfmt.d/$QEMU.conf ]; then
            cat /usr/lib/binfmt.d/$QEMU.conf > /proc/sys/fs/binfmt_misc/register
        fi
    fi
    [ -f /proc/sys/fs/binfmt_misc/$QEMU ] || { echo "build_rootfs.sh: no binfmt_misc entry for $QEMU (apt-get install qemu-user-static binfmt-support)" >&2; exit 1; }
fi

rm -rf "$DEST.tmp"
mkdir -p "$(dirname "$DEST")"
echo "rootfs $ARCH: debootstrap $SUITE into $DEST (amd64 ~2 min, arm64 ~10 min under qemu)"
debootstrap --variant=minbase --arch="$ARCH" --include="$PACKAGES" "$SUITE" "$DEST.tmp" "$MIRROR" \
    > "$DEST.log" 2>&1 || { tail -20 "$DEST.log" >&2; exit 1; }
# A clean tree to boot: no machine id yet (systemd makes one per boot, like a freshly flashed card), and
# apt's lists dropped to keep the cache small.
: > "$DEST.tmp/etc/machine-id"
rm -rf "$DEST.tmp/var/lib/apt/lists/"* "$DEST.tmp/var/cache/apt/archives/"*.deb
echo "$STAMP" > "$DEST.tmp/.bedtime-rootfs"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "rootfs $ARCH: ready"
