#!/usr/bin/env bash
# build_guest.sh OUTDIR: build the tiny guest the real-QEMU tests boot.
#
#   OUTDIR/vmlinuz    Debian's cloud kernel, taken from the linux-image-cloud-amd64 package
#   OUTDIR/initrd.gz  busybox-static + the virtio/ACPI modules + guest-init as /init
#
# Booted by direct kernel boot (console=ttyS0), it prints a tick line per second on
# the serial console. Cached: when OUTDIR already holds both files, built by this
# script and guest-init as they are now (OUTDIR/.recipe), nothing is done; FORCE=1
# rebuilds. Needs busybox-static, cpio and apt access (scripts/libvirt/install.sh).
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
OUT=${1:?usage: build_guest.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
RECIPE=$(cat "$HERE/build_guest.sh" "$HERE/guest-init" | sha256sum | cut -c1-16)
if [ -z "${FORCE:-}" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] \
        && [ "$(cat "$OUT/.recipe" 2>/dev/null)" = "$RECIPE" ]; then
    echo "build_guest.sh: $OUT already has vmlinuz and initrd.gz"
    exit 0
fi
# The initramfs has no libc: only the statically linked busybox will do.
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] \
    || { echo "build_guest.sh: busybox-static missing (run install.sh)" >&2; exit 1; }

# The metapackage depends on the versioned kernel package that holds the files.
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "build_guest.sh: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEB=$(ls /var/cache/apt/archives/"${KPKG}"_*.deb 2>/dev/null | tail -n1 || true)
if [ -z "$DEB" ]; then
    # As root into a private directory: no point in apt's _apt sandbox (it would only warn).
    (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
    DEB=$(ls "$WORK"/"${KPKG}"_*.deb)
fi

mkdir "$WORK/pkg"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK/pkg" --wildcards \
    './boot/vmlinuz-*' \
    './lib/modules/*/kernel/drivers/virtio/*' \
    './lib/modules/*/kernel/drivers/block/virtio_blk.ko' \
    './lib/modules/*/kernel/drivers/net/virtio_net.ko' \
    './lib/modules/*/kernel/drivers/net/net_failover.ko' \
    './lib/modules/*/kernel/net/core/failover.ko' \
    './lib/modules/*/kernel/drivers/acpi/button.ko' \
    './lib/modules/*/kernel/drivers/input/evdev.ko'

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules,etc/acpi/PWRF}
cp /bin/busybox "$R/bin/busybox"
cp -a "$WORK"/pkg/lib/modules/. "$R/lib/modules/"   # depmod runs in the guest
cp "$HERE/guest-init" "$R/init"
# busybox acpid's built-in table runs PWRF/00000080 when the power button is pressed.
printf '#!/bin/busybox sh\necho "computeflow-guest: power button, powering off"\nexec /bin/busybox poweroff -f\n' \
    > "$R/etc/acpi/PWRF/00000080"
chmod 755 "$R/init" "$R/etc/acpi/PWRF/00000080"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -9) > "$WORK/initrd.gz"

# Publish atomically: a build killed half way leaves no half file under the final names.
cp "$WORK"/pkg/boot/vmlinuz-* "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.gz" "$OUT/initrd.gz"
chmod 644 "$OUT/vmlinuz" "$OUT/initrd.gz"
echo "$RECIPE" > "$OUT/.recipe"
echo "build_guest.sh: built $OUT/vmlinuz and $OUT/initrd.gz from $KPKG"
