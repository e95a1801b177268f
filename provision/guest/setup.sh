#!/bin/sh
# provision/guest/setup.sh - turn the Debian 12 guest into the article's
# "Slackware server" layout. Runs INSIDE the guest rootfs (chroot at box-build
# time, no running systemd), after provision/guest/overlay/ was copied to /.
# Idempotent: running it again (also on a live guest) changes nothing more.
#
# What it does (details in docs/slackware-layer.md):
#   * rc.d scripts executable, one systemd unit (rc-slackware.service) enabled,
#     the distribution units they replace masked (one manager per service);
#   * Apache: modules, no 000-default site, /etc/httpd -> /etc/apache2;
#   * SASL: /etc/sasl2/ (the SASL link and postfix's group are converge's);
#   * Postfix without syslog: maillog_file = /var/log/maillog;
#   * dnsmasq: Slackware-like default /etc/dnsmasq.conf (all comments);
#   * the lab's own directories (/etc/dehydrated, /etc/ente-lab, /etc/pebble),
#     group "users" (the article's compose/data directories are converge's).
set -eu

log() {
    printf 'ente-lab setup: %s\n' "$*"
}

warn() {
    printf 'ente-lab setup: WARNING: %s\n' "$*" >&2
}

# The service list is defined once (entelab/vocab.py); the box build writes it here.
SERVICES_FILE=/etc/ente-lab/services
if [ ! -s "$SERVICES_FILE" ]; then
    printf 'ente-lab setup: %s missing (the box build writes it first)\n' "$SERVICES_FILE" >&2
    exit 1
fi
RC_SCRIPTS="$(awk '!/^[[:space:]]*#/ && NF { printf "rc.%s ", $1 }' "$SERVICES_FILE")rc.M"
MASK_UNITS="apache2.service apache-htcacheclean.service postfix.service postfix@-.service
postfix-resolvconf.path postfix-resolvconf.service saslauthd.service docker.service
docker.socket containerd.service dnsmasq.service"
# Debian's periodic jobs, which a Slackware server does not have (it has cron, no
# e2scrub): e2scrub_reap.service took 14.6 s of every TCG boot beside rc.M, and the
# timers would fire in the middle of a rehearsal (apt-daily would even try the
# network, which the lab never leaves). Masked the same way, none replaced.
QUIET_UNITS="e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer
fstrim.timer man-db.timer dpkg-db-backup.timer"
RC_UNIT=rc-slackware.service
UNIT_DIR=/etc/systemd/system

# ------------------------------------------------------------------ overlay sanity
# 'cp -a overlay/. /' also copies the modes/owners of the overlay's directories
# onto existing system ones; a checkout made under a strict umask would leave
# /etc or /usr 0700. Re-assert what Debian has.
for d in /etc /etc/rc.d /etc/systemd /etc/systemd/system /etc/dhcp \
    /etc/dhcp/dhclient-enter-hooks.d /usr /usr/local /usr/local/lib /usr/local/lib/ente-lab; do
    if [ -d "$d" ]; then
        chown root:root "$d"
        chmod 0755 "$d"
    fi
done
for f in $RC_SCRIPTS; do
    if [ ! -f "/etc/rc.d/$f" ]; then
        warn "/etc/rc.d/$f missing (was the overlay copied?)"
        exit 1
    fi
    chown root:root "/etc/rc.d/$f"
    chmod 0755 "/etc/rc.d/$f"
done
chown root:root /usr/local/lib/ente-lab/rc.functions
chmod 0644 /usr/local/lib/ente-lab/rc.functions
chmod 0644 "$UNIT_DIR/$RC_UNIT" /etc/dhcp/dhclient.conf \
    /etc/dhcp/dhclient-enter-hooks.d/ente-lab-keep-resolv
log "rc.d scripts in place: $RC_SCRIPTS"

# ------------------------------------------------------------------ systemd units
# Plain symlinks (what 'systemctl mask/enable' create) work the same in a chroot
# and on a live system; systemctl is tried first and the result checked.
mask_unit() {
    u=$1
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable "$u" >/dev/null 2>&1 || true
        systemctl mask "$u" >/dev/null 2>&1 || true
    fi
    if [ "$(readlink "$UNIT_DIR/$u" 2>/dev/null || true)" != /dev/null ]; then
        rm -f "$UNIT_DIR/$u"
        ln -s /dev/null "$UNIT_DIR/$u"
    fi
    # leftovers of an enable done before the mask
    for w in "$UNIT_DIR"/*.wants/"$u"; do
        [ -L "$w" ] && rm -f "$w"
    done
    return 0
}

for u in $MASK_UNITS; do
    mask_unit "$u"
done
log "masked: $(echo "$MASK_UNITS" | tr '\n' ' ')"
for u in $QUIET_UNITS; do
    mask_unit "$u"
done
log "periodic jobs masked: $(echo "$QUIET_UNITS" | tr '\n' ' ')"

if command -v systemctl >/dev/null 2>&1; then
    systemctl enable "$RC_UNIT" >/dev/null 2>&1 || true
fi
mkdir -p "$UNIT_DIR/multi-user.target.wants"
if [ ! -L "$UNIT_DIR/multi-user.target.wants/$RC_UNIT" ]; then
    ln -s "$UNIT_DIR/$RC_UNIT" "$UNIT_DIR/multi-user.target.wants/$RC_UNIT"
fi
log "enabled $RC_UNIT (runs /etc/rc.d/rc.M start at boot, stop at shutdown)"

# network-online.target must really wait for ifupdown (Debian 12 ifupdown ships it)
if [ -f /lib/systemd/system/ifupdown-wait-online.service ] && command -v systemctl >/dev/null 2>&1; then
    systemctl enable ifupdown-wait-online.service >/dev/null 2>&1 || true
fi

# ------------------------------------------------------------------ Apache
if command -v a2enmod >/dev/null 2>&1; then
    a2enmod -q proxy proxy_http proxy_wstunnel ssl headers http2 remoteip rewrite >/dev/null
    a2dissite -q 000-default >/dev/null 2>&1 || true
    log "apache: modules proxy proxy_http proxy_wstunnel ssl headers http2 remoteip rewrite enabled, 000-default disabled"
else
    warn "a2enmod not found (apache2 not installed?)"
fi
# Debian's apachectl hands 'apachectl start' over to systemctl when PID 1 is
# systemd; apache2.service is masked, so tell it that it is managed already.
ENVVARS=/etc/apache2/envvars
if [ -f "$ENVVARS" ] && ! grep -q 'ente-lab' "$ENVVARS"; then
    cat >>"$ENVVARS" <<'EOF'

# ente-lab: Apache is managed by /etc/rc.d/rc.httpd (Slackware style), not by
# systemd; without this, 'apachectl start' would call 'systemctl start apache2',
# which is masked.
export APACHE_STARTED_BY_SYSTEMD=true
EOF
fi
if [ ! -e /etc/httpd ] || [ -L /etc/httpd ]; then
    ln -sfn /etc/apache2 /etc/httpd
else
    warn "/etc/httpd exists and is not a symlink; left alone"
fi
[ -x /usr/sbin/apachectl ] || warn "/usr/sbin/apachectl missing"

# ------------------------------------------------------------------ SASL + Postfix
# The SASL link (/etc/postfix/sasl/smtpd.conf -> /etc/sasl2/smtpd.conf) and
# postfix's membership of group sasl are converge's (templates/sasl, templates/users).
mkdir -p /etc/sasl2
chmod 0755 /etc/sasl2
# No syslog in the guest: Postfix logs to a file with Slackware's name.
touch /var/log/maillog
chmod 0640 /var/log/maillog
if command -v postconf >/dev/null 2>&1; then
    postconf -e 'maillog_file = /var/log/maillog'
fi
log "postfix: maillog_file = /var/log/maillog"
# The lab's main.cf sets no smtp_tls_CApath (templates/postfix/main.cf.j2: its
# Postfix delivers nothing outside the lab). Drop Debian's default here too, and
# the copy of /etc/ssl/certs its postinst made in the chroot: 'postfix check'
# compares every file there with the system's (about 140: 23-25 s -> 11-13 s
# per check in the TCG guest).
if command -v postconf >/dev/null 2>&1; then
    postconf -X smtp_tls_CApath
fi
rm -rf /var/spool/postfix/etc/ssl
log "postfix: no smtp_tls_CApath, no copy of /etc/ssl/certs in the chroot"

# ------------------------------------------------------------------ dnsmasq
if [ ! -e /etc/dnsmasq.conf ]; then
    if [ -f /usr/share/doc/dnsmasq-base/examples/dnsmasq.conf.example ]; then
        # Slackware ships the upstream example (every line a comment) as
        # /etc/dnsmasq.conf; the article uses it unchanged.
        cp /usr/share/doc/dnsmasq-base/examples/dnsmasq.conf.example /etc/dnsmasq.conf
    else
        printf '%s\n' '# /etc/dnsmasq.conf - default (everything commented), as on Slackware.' \
            '# dnsmasq serves /etc/hosts and forwards to the servers in /etc/resolv.conf.' \
            >/etc/dnsmasq.conf
    fi
    chmod 0644 /etc/dnsmasq.conf
    log "dnsmasq: default /etc/dnsmasq.conf installed"
fi

# ------------------------------------------------------------------ lab directories
# The article's compose and data directories follow the paths.* settings: converge
# creates them (templates/ente/service.yaml, dirs).
mkdir -p /etc/dehydrated /etc/ente-lab /etc/pebble
getent group users >/dev/null || groupadd -g 100 users
command -v docker-compose >/dev/null 2>&1 || warn "docker-compose not found (package docker-compose)"
command -v killall >/dev/null 2>&1 || warn "killall not found (package psmisc)"
command -v testsaslauthd >/dev/null 2>&1 || warn "testsaslauthd not found (package sasl2-bin)"
touch /var/log/docker.log /var/log/pebble.log
chmod 0640 /var/log/docker.log /var/log/pebble.log

log "done"
