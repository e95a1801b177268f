#!/bin/bash
# provision/guest/nspawn-boot-smoke.sh ROOTFS - boot the guest rootfs with systemd as
# PID 1 (systemd-nspawn, private network) and check the boot path of the Slackware
# layer: rc-slackware.service ran rc.M at boot, every service is up, the distribution
# units are masked, no unit failed, and at poweroff rc.M stopped them in reverse order.
#
# ROOTFS: a guest rootfs with the overlay copied and setup.sh run. A temporary unit
# (ente-lab-boot-smoke.service) is added for the run and removed afterwards; the rest
# of the rootfs changes as a booted guest's would. Needs root and systemd-nspawn
# (package systemd-container). No VM, no network: only the container's loopback.
set -euo pipefail

R=$(readlink -f "${1:?usage: $0 ROOTFS}")
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing (apt-get install systemd-container)" >&2; exit 1; }
[ -f "$R/etc/systemd/system/rc-slackware.service" ] || { echo "$R: overlay not applied" >&2; exit 1; }

UNIT=ente-lab-boot-smoke.service
OUT=/root/ente-lab-boot-smoke.out
WORK=$(mktemp -d)
cleanup() {
    rm -f "$R/etc/systemd/system/$UNIT" "$R/etc/systemd/system/multi-user.target.wants/$UNIT" "$R$OUT"
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$R/etc/systemd/system/$UNIT" <<EOF
[Unit]
Description=ente-lab boot smoke (temporary)
After=rc-slackware.service
Wants=rc-slackware.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c '{ echo "== status"; /etc/rc.d/rc.M status; echo "rc=\$?"; echo "== active"; systemctl is-active rc-slackware.service; echo "== enabled"; systemctl is-enabled rc-slackware.service; echo "== masked"; systemctl is-enabled apache2.service apache-htcacheclean.service postfix.service postfix@-.service saslauthd.service docker.service docker.socket containerd.service dnsmasq.service; echo "== failed"; systemctl list-units --failed --no-legend --plain; echo "== end"; } >$OUT 2>&1; systemctl poweroff'
[Install]
WantedBy=multi-user.target
EOF
ln -sf "/etc/systemd/system/$UNIT" "$R/etc/systemd/system/multi-user.target.wants/$UNIT"
[ -s "$R/etc/machine-id" ] || : >"$R/etc/machine-id"

echo "booting $R with systemd-nspawn (private network)..."
start=$(date +%s)
rc=0
timeout 600 systemd-nspawn -q -D "$R" -b --private-network --register=no --keep-unit \
    -M ente-lab-smoke >"$WORK/console.log" 2>&1 || rc=$?
echo "container exited ($rc) after $(( $(date +%s) - start )) s"
sed 's/\x1b\[[0-9;]*m//g; s/\r$//' "$WORK/console.log" >"$WORK/console.txt"

fail=0
check() { # DESCRIPTION COMMAND...
    local d=$1; shift
    if "$@"; then echo "ok   $d"; else echo "FAIL $d"; fail=1; fi
}
res=$R$OUT
check "smoke unit ran" test -s "$res"
[ -s "$res" ] && sed 's/^/     /' "$res"
check "rc.M status: all six running" grep -q '^rc=0$' "$res"
check "rc-slackware.service active" grep -qx 'active' "$res"
check "distribution units masked (9)" test "$(sed -n '/== masked/,/== failed/p' "$res" | grep -cx masked)" = 9
check "no failed unit" test -z "$(sed -n '/== failed/,/== end/p' "$res" | grep -v '^==')"
check "boot: rc.M started all" grep -q 'all enabled services started' "$WORK/console.txt"
check "poweroff: rc.M stopped all" grep -q 'services stopped' "$WORK/console.txt"
order=$(grep -o 'rc\.[a-z]* stop$' "$WORK/console.txt" | tr '\n' ' ' || true)
check "poweroff: reverse order ($order)" test "$order" = "rc.docker stop rc.httpd stop rc.pebble stop rc.postfix stop rc.saslauthd stop rc.dnsmasq stop "
if [ "$fail" != 0 ]; then
    echo "--- console (rc.M lines) ---"
    grep -E 'rc\.M|rc-slackware|FAILED|Failed' "$WORK/console.txt" | tail -60
    echo "nspawn-boot-smoke: FAILURES"
    exit 1
fi
echo "nspawn-boot-smoke: all checks passed"
