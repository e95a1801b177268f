#!/bin/bash
# provision/guest/chroot-smoke.sh ROOTFS - boot-less smoke test of the guest layer.
#
# Runs the guest's /etc/rc.d/rc.M start, checks every service the way a user of
# the article would (dig, curl, postfix check/reload, testsaslauthd, docker info,
# apachectl -k graceful, killall -HUP dnsmasq), then rc.M stop and checks that
# everything is down. ROOTFS is a Debian 12 rootfs with the guest packages, the
# overlay copied in and setup.sh run (e.g. the box builder's mmdebstrap tree).
#
# Isolation: a private network namespace (only its own loopback), PID namespace
# and mount namespace (tmpfs /run and /tmp); nothing is left mounted or running
# when it exits. The rootfs is modified as a booted guest would be (logs,
# /etc/pebble/tls, the trust store). Needs root, unshare, chroot.
set -euo pipefail

# The checks, run inside the chroot (shipped there with declare -f).
check() { # DESCRIPTION COMMAND...
    local d=$1; shift
    if "$@" >/tmp/check.out 2>&1; then
        echo "ok   $d"
    else
        echo "FAIL $d"; sed 's/^/     /' /tmp/check.out; fail=1
    fi
}

inside_checks() {
    set -u
    fail=0
    echo "== /etc/rc.d/rc.M start"
    /etc/rc.d/rc.M start
    check "rc.M status: all running" /etc/rc.d/rc.M status
    grep -q 'ente-lab-smoke' /etc/hosts || echo "192.0.2.77 ente-lab-smoke.lan" >>/etc/hosts
    check "killall -HUP dnsmasq" killall -HUP dnsmasq
    sleep 0.5
    # shellcheck disable=SC2016 # expanded inside
    check "dnsmasq answers from /etc/hosts" bash -c '[ "$(dig +short @127.0.0.1 ente-lab-smoke.lan)" = 192.0.2.77 ]'
    sed -i '/ente-lab-smoke/d' /etc/hosts
    check "testsaslauthd answers" bash -c 'testsaslauthd -u nosuchuser -p x | grep -q "^0: NO"'
    check "postfix check" postfix check
    # shellcheck disable=SC2016 # expanded inside
    check "no CA path, no certificate copies in Postfix's chroot" \
        bash -c '[ -z "$(postconf -h smtp_tls_CApath)" ] && [ ! -e /var/spool/postfix/etc/ssl ]'
    check "postfix reload" postfix reload
    check "smtp banner on 25" bash -c 'exec 3<>/dev/tcp/127.0.0.1/25; head -1 <&3 | grep -q ESMTP'
    check "apachectl configtest" apachectl configtest
    check "apachectl -k graceful" apachectl -k graceful
    check "http on 80" curl -s -o /dev/null http://127.0.0.1/
    check "pebble ACME directory" curl -sf --cacert /etc/ente-lab/pebble-tls-ca.pem https://localhost:14000/dir
    check "ACME root in trust store" openssl verify -CAfile /etc/ssl/certs/ca-certificates.crt /etc/ente-lab/acme-intermediate.pem
    check "pebble marker" test -s /run/ente-lab/pebble.started
    check "docker info" docker info
    check "docker-compose" docker-compose version
    for s in dnsmasq saslauthd postfix pebble httpd docker; do
        check "rc.$s reload" /etc/rc.d/rc.$s reload
    done
    echo "== /etc/rc.d/rc.M stop"
    /etc/rc.d/rc.M stop
    check "rc.M status: all stopped (exit 3)" bash -c '/etc/rc.d/rc.M status; [ $? = 3 ]'
    check "no daemon left" bash -c '! pgrep -x "dnsmasq|saslauthd|master|pebble|apache2|dockerd|containerd"'
    if [ "$fail" = 0 ]; then echo "chroot-smoke: all checks passed"; else echo "chroot-smoke: FAILURES"; fi
    exit "$fail"
}

if [ "${1:-}" = "--inside" ]; then
    R=$2
    ip link set lo up
    mount --rbind /dev "$R/dev"
    mount --rbind /sys "$R/sys"
    mount -t tmpfs tmpfs "$R/run"
    mkdir -p "$R/run/lock"
    mount -t tmpfs tmpfs "$R/tmp"
    chmod 1777 "$R/tmp"
    exec chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "$(declare -f check inside_checks); inside_checks"
fi

R=$(readlink -f "${1:?usage: $0 ROOTFS}")
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
[ -x "$R/etc/rc.d/rc.M" ] || { echo "$R/etc/rc.d/rc.M missing: copy the overlay and run setup.sh first" >&2; exit 1; }
timeout 600 unshare --net --mount --pid --fork --mount-proc="$R/proc" "$0" --inside "$R"

