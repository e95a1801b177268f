"""The lab VM as later stages need it: reachable over SSH, sudo, baked packages, a disk
that survives a halt."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.vm


def test_commands_run(guest):
    out = guest.run("uname -sr; cat /etc/debian_version; id -un", sudo=False)
    lines = out.stdout.split("\n")
    assert lines[0].startswith("Linux 6.1")
    assert lines[1].startswith("12.")
    assert lines[2] == "vagrant"


def test_command_failure_is_reported(guest):
    res = guest.run("exit 3", sudo=False, check=False)
    assert res.exited == 3


def test_sudo_without_password(guest):
    assert guest.run("sudo -n true", sudo=False, check=False).ok
    assert guest.run("sudo -n id -u", sudo=False).stdout.strip() == "0"


def test_hostname_from_settings(guest):
    import json

    from entelab.state import paths
    expected = json.loads(paths().vagrant_json.read_text())["hostname"]
    assert guest.run("hostname", sudo=False).stdout.strip() == expected


@pytest.mark.parametrize("cmd, expect", [
    ("sudo -n /usr/sbin/apache2ctl -v", "Apache/2.4"),
    ("/usr/sbin/postconf -h mail_version", "3.7"),
    ("docker --version", "Docker version 20.10"),
    ("docker-compose --version", "1.29"),
    ("sudo -n dehydrated --version", "Dehydrated version: 0.7"),
    ("dpkg-query -W -f='${Version}' pebble", "2.4"),
    ("swaks --version", "swaks version"),
    ("openssl version", "OpenSSL 3.0"),
    ("curl --version", "curl 7.88"),
    ("python3 --version", "Python 3.11"),
    ("/usr/sbin/saslauthd -v 2>&1", "saslauthd"),
    ("/usr/sbin/dnsmasq --version", "Dnsmasq version"),
    ("dig -v 2>&1", "DiG 9."),
])
def test_baked_package_runs(guest, cmd, expect):
    res = guest.run(cmd, sudo=False, check=False)
    assert expect in res.stdout + res.stderr, f"{cmd!r} printed {res.stdout!r} {res.stderr!r}"


def test_apparmor_and_docker_daemon(guest):
    # Docker in the guest refuses containers without AppArmor in the image
    assert guest.run("test -d /sys/kernel/security/apparmor || test -x /sbin/apparmor_parser",
                     sudo=False, check=False).ok
    # dockerd is started at boot by the guest layer; under TCG it may still be coming up
    deadline = time.monotonic() + 180
    while True:
        res = guest.run("sudo -n docker info --format '{{.ServerVersion}}' 2>&1", sudo=False, check=False)
        if res.ok or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert res.ok and res.stdout.strip().startswith("20.10"), res.stdout


def test_root_on_virtio_disk_with_room(guest):
    out = guest.run("findmnt -n -o SOURCE,FSTYPE /; df -BG --output=size / | tail -1", sudo=False).stdout.split("\n")
    assert out[0].split() == ["/dev/vda", "ext4"]
    assert int(out[1].strip().rstrip("G")) >= 10

# The halt/up cycle (disk kept, services back, renewals after pebble restarts)
# is in test_zz_restart.py: it runs last, once, for all of them.
