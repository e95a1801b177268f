#!/bin/sh
# mmdebstrap customize hook for the ente-lab base box.
# Usage: customize.sh ROOTFS OUTDIR VAGRANT_PUBKEY
# Makes the tree bootable by direct kernel boot under vagrant-libvirt and copies
# the kernel and initrd to OUTDIR. Runs on the host, as root, with ROOTFS mounted.
set -eu
R="$1"; OUT="$2"; PUB="$3"

echo debian12 > "$R/etc/hostname"
cat > "$R/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
127.0.1.1	debian12
::1	localhost ip6-localhost ip6-loopback
HOSTS

cat > "$R/etc/fstab" <<'FSTAB'
/dev/vda	/	ext4	defaults,errors=remount-ro	0	1
FSTAB

mkdir -p "$R/etc/network"
cat > "$R/etc/network/interfaces" <<'IFACES'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
allow-hotplug eth0
iface eth0 inet dhcp
IFACES

# user vagrant: passwordless sudo, Vagrant's well-known key (Vagrant swaps it on first up)
chroot "$R" useradd --create-home --shell /bin/bash --user-group vagrant
chroot "$R" usermod -aG sudo vagrant
echo 'vagrant:vagrant' | chroot "$R" chpasswd
install -d -m 0700 "$R/home/vagrant/.ssh"
install -m 0600 "$PUB" "$R/home/vagrant/.ssh/authorized_keys"
chown -R "$(chroot "$R" id -u vagrant):$(chroot "$R" id -g vagrant)" "$R/home/vagrant"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$R/etc/sudoers.d/vagrant"
chmod 0440 "$R/etc/sudoers.d/vagrant"

# sshd: fast logins without DNS; host keys regenerated on the first boot of each VM
printf 'UseDNS no\nGSSAPIAuthentication no\n' > "$R/etc/ssh/sshd_config.d/ente-lab.conf"
rm -f "$R"/etc/ssh/ssh_host_*
cat > "$R/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys (first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/ssh-hostkeys.service \
   "$R/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service"

# a serial console, and a marker the acceleration probe can also look for
ln -sf /lib/systemd/system/serial-getty@.service \
   "$R/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"

# each VM gets its own machine id
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"

# direct kernel boot: kernel and initrd live next to the disk in the box
mkdir -p "$OUT"
cp -L "$R/vmlinuz" "$OUT/vmlinuz"
cp -L "$R/initrd.img" "$OUT/initrd.img"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd.img"
