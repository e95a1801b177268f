#!/bin/sh
# mmdebstrap customize hook: fill the guest's /var/lib/docker with the lab's images.
# Usage: bake-images.sh ROOTFS
#
# Runs the box's OWN dockerd (docker.io of the rootfs, so the on-disk format is the
# guest's) chrooted into ROOTFS, on a private socket, with no bridge, no iptables and
# no forwarding: it touches neither the host's network nor a host Docker. Then the
# guest's own `ente-lab-images load` imports the stand-in rootfs tar once and builds
# the metadata-only images, exactly as it would at the first start in the guest,
# where it then finds everything present and does nothing. Under TCG that first
# load took about 4 minutes per new VM (docs/benchmarks.md); here it takes seconds.
# The tars stay in the box: `ente-lab-images load` re-imports from them after a
# `docker system prune -a` in the guest.
set -eu
R="$1"
SOCK=/run/ente-lab-bake.sock
DOCKER="docker -H unix://$SOCK"       # for ente-lab-images (its DOCKER variable)
LOG="$R/var/log/ente-lab-bake-dockerd.log"
pid=""
bound=""

stop() {
    rc=$?
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    fi
    # the managed containerd dockerd started, should it outlive dockerd
    for p in $(pgrep -f "containerd/containerd.toml" || true); do
        if [ "$(readlink "/proc/$p/root")" = "$(readlink -f "$R")" ]; then kill "$p" 2>/dev/null || true; fi
    done
    # one lazy unmount of the bind detaches everything on it: ours and dockerd's own
    if [ -n "$bound" ]; then umount -l "$R" || true; fi
    if [ $rc -ne 0 ]; then
        echo "bake-images: failed; dockerd's log:" >&2
        tail -n 30 "$LOG" >&2 || true
    fi
    exit $rc
}
trap stop EXIT INT TERM
# $DOCKER word-split on purpose: "docker -H unix://..."
# shellcheck disable=SC2086
dk() { chroot "$R" $DOCKER "$@"; }

# The tree bound onto itself, private: dockerd's `docker import` remounts the chroot's
# / (it must be a mount point), and nothing mounted below propagates to the host or
# touches mmdebstrap's own mounts, which the bind hides until it is gone.
mount --bind "$R" "$R"
bound=1
mount --make-private "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
# the host's cgroup hierarchies: dockerd refuses to start without them, though it
# starts no container here
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount --bind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"

echo "bake-images: starting the box's dockerd in the rootfs (no bridge, no iptables)"
chroot "$R" dockerd --host "unix://$SOCK" \
    --data-root /var/lib/docker --exec-root /run/docker --storage-driver overlay2 \
    --bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$LOG" 2>&1 &
pid=$!
i=0
until dk info >/dev/null 2>&1; do
    i=$((i + 1))
    if ! kill -0 "$pid" 2>/dev/null; then echo "bake-images: dockerd exited" >&2; pid=""; exit 1; fi
    if [ $i -gt 120 ]; then echo "bake-images: dockerd did not answer in 60 s" >&2; exit 1; fi
    sleep 0.5
done
chroot "$R" env DOCKER="$DOCKER" /usr/local/sbin/ente-lab-images load
chroot "$R" env DOCKER="$DOCKER" /usr/local/sbin/ente-lab-images status
# no build cache, no stopped containers: only the images
dk container prune --force >/dev/null
dk builder prune --all --force >/dev/null 2>&1 || true
