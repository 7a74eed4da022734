#!/usr/bin/env bash
# Install what the real-QEMU tier of the libvirt driver needs (Debian 12, as root).
# Idempotent: packages already installed are not touched and apt is not run at all.
#   libvirt-daemon-system  libvirtd, virtlogd and the qemu driver (no systemd needed: see start_daemon.sh)
#   qemu-system-x86        the emulator (guests run under TCG; KVM does not work on these machines)
#   qemu-utils             qemu-img, used by the driver to create disks
#   linux-image-cloud-amd64, busybox-static, cpio   the tiny test guest (build_guest.sh)
set -euo pipefail
PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
          linux-image-cloud-amd64 busybox-static cpio)

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install.sh: everything already installed"
    exit 0
fi
echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# policy-rc.d refuses service starts during install: there is no init system to ask.
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "install.sh: done"
