#!/bin/sh
# mmdebstrap customize hook: apply the guest overlay and setup script (owned by
# the guest-provisioning side) to the box.
# Usage: guest-hook.sh ROOTFS GUEST_DIR
set -eu
R="$1"; G="$2"
if [ -d "$G/overlay" ]; then
    echo "guest-hook: copying $G/overlay into the image"
    cp -a "$G/overlay/." "$R/"
fi
if [ -f "$G/setup.sh" ]; then
    echo "guest-hook: running $G/setup.sh in the chroot"
    cp "$G/setup.sh" "$R/tmp/ente-lab-setup.sh"
    chroot "$R" /bin/sh -e /tmp/ente-lab-setup.sh
    rm -f "$R/tmp/ente-lab-setup.sh"
fi
