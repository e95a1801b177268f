"""Host preparation: install what the lab needs, start libvirt, undo it afterwards.

``prepare`` installs the Debian packages without letting their maintainer scripts
start daemons (a temporary ``policy-rc.d``), and, where systemd is not PID 1,
starts ``virtlogd`` and ``libvirtd`` itself with pidfiles in the lab's run dir.
Everything it started or changed is recorded in ``<run>/host.json`` so that
``restore`` stops only those daemons and removes only what libvirt left behind
because of this run (its firewall chains, ``net.ipv4.ip_forward``). The daemons
themselves are ``daemons.py``'s, the firewall chains ``firewall.py``'s.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import daemons, firewall
from .errors import StageFailed
from .hostrun import run
from .progress import info, stage, warn
from .state import LabPaths, ensure_dirs

# What the host needs. dnsmasq-base (the binary libvirt runs) rather than the
# dnsmasq service that would hold port 53; no ovmf (direct kernel boot).
APT_PACKAGES = [
    "qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
    "dnsmasq-base", "iptables", "iproute2", "vagrant", "vagrant-libvirt", "mmdebstrap",
    "e2fsprogs", "procps", "openssl",   # mkfs.ext4 -d for the image, pgrep (absent from minimal images)
]
# Command each package provides, for the message on other systems.
OTHER_SYSTEMS = """\
This host is not Debian/Ubuntu; install these yourself, then run `invoke host.prepare` again:
  - QEMU for x86_64 (qemu-system-x86_64) and qemu-img
  - libvirt daemon + client (libvirtd, virtlogd, virsh) with the QEMU driver
  - dnsmasq (binary only; libvirt runs it for its NAT network) and iptables
  - Vagrant 2.3+ with the vagrant-libvirt plugin (`vagrant plugin install vagrant-libvirt`)
  - mmdebstrap (builds the Debian 12 box) and Debian's archive keyring
  Fedora: dnf install qemu-system-x86 qemu-img libvirt-daemon-kvm libvirt-client dnsmasq
          iptables vagrant vagrant-libvirt mmdebstrap debian-keyring
  Arch:   pacman -S qemu-base libvirt dnsmasq iptables-nft vagrant mmdebstrap debian-archive-keyring
          && vagrant plugin install vagrant-libvirt"""

# The programs the host tests validate rendered files with (real tools, no skips).
TEST_PACKAGES = [
    "apache2", "postfix", "sasl2-bin", "libsasl2-modules", "sendmail-cf", "m4", "sudo",
    "dnsmasq-base", "docker-compose", "shellcheck", "openssl", "curl", "pebble", "dehydrated",
    "git",   # test_scripts_executable_in_git reads the modes git records
    # The stand-in tests (tests/host/test_standin_*.py): the postgres entrypoint runs the real
    # PostgreSQL 15 (no daemon: policy-rc.d), node evaluates the web stand-in's config.js.
    "postgresql-15", "nodejs",
    # The browser test (tests/host/test_browser.py): Debian's Chromium, driven headless by
    # Playwright's client, and certutil for its throw-away NSS database (the lab root).
    "chromium", "libnss3-tools",
    # lab.diff / lab.import (tests/host/test_proddiff.py): a production stand-in reached
    # over real SSH, an sshd on 127.0.0.1 started by the test (no service is enabled).
    "openssh-server",
]

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


# ------------------------------------------------------------------ facts
def record_file(p: LabPaths) -> Path:
    return p.run / "host.json"


def _load_record(p: LabPaths) -> dict:
    try:
        return json.loads(record_file(p).read_text())
    except (OSError, ValueError):
        return {}


def _save_record(p: LabPaths, rec: dict) -> None:
    p.run.mkdir(parents=True, exist_ok=True)
    record_file(p).write_text(json.dumps(rec, indent=2) + "\n")


def is_debian_like(os_release: Path = Path("/etc/os-release")) -> bool:
    try:
        text = os_release.read_text()
    except OSError:
        return Path("/etc/debian_version").exists()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    ids = (fields.get("ID", "") + " " + fields.get("ID_LIKE", "")).replace('"', "").split()
    return "debian" in ids or "ubuntu" in ids


def systemd_is_init() -> bool:
    return Path("/run/systemd/system").is_dir()


def missing_packages(packages=APT_PACKAGES) -> list[str]:
    """Packages dpkg does not report as installed."""
    out = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
              check=False).stdout
    installed = {line.split()[0] for line in out.splitlines()
                 if len(line.split()) >= 2 and line.split()[1].startswith("ii")}
    return [pkg for pkg in packages if pkg not in installed]


# ------------------------------------------------------------------ prepare
def _apt_install(p: LabPaths, packages: list[str]) -> None:
    log = p.logs / "host-prepare.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a")
    created_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\n# ente-lab host.prepare: no daemon starts during install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        created_policy = True
    try:
        run(["apt-get", "update"], log=log, env=env)
        run(["apt-get", "install", "-y", "--no-install-recommends",
                    "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                    *packages], log=log, env=env)
    finally:
        if created_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def prepare(paths: LabPaths, dry_run: bool = False) -> None:
    ensure_dirs(paths)
    rec = _load_record(paths)
    with stage("host packages", log=paths.logs / "host-prepare.log",
               hint="read the log; `apt-get install` must work as root"):
        missing = missing_packages() if shutil.which("dpkg-query") else APT_PACKAGES
        if not missing:
            info("  all host packages present (apt skipped)")
        elif not is_debian_like():
            info(OTHER_SYSTEMS)
            raise StageFailed("host packages missing on a non-Debian system (see the list above)")
        elif dry_run:
            info(f"  would apt-get install: {' '.join(missing)} (policy-rc.d blocks daemon starts)")
        else:
            info(f"  installing: {' '.join(missing)}")
            _apt_install(paths, missing)
            still = missing_packages()
            if still:
                raise StageFailed(f"still missing after apt-get: {' '.join(still)}")

    with stage("libvirt daemons", log=paths.logs / "host-prepare.log",
               hint="see the log; `virsh -c qemu:///system version` must answer"):
        if systemd_is_init():
            if not daemons.libvirt_ready():
                if dry_run:
                    info("  would run: systemctl start libvirtd")
                    return
                run(["systemctl", "start", "libvirtd"], log=paths.logs / "host-prepare.log")
            daemons.wait_libvirt()
            return
        started = list(rec.get("started", []))
        for name in daemons.DAEMONS:
            own = daemons.pidfile_pid(paths.run / f"{name}.pid")
            if name in started and own and daemons.pid_alive(own, name):
                info(f"  {name}: running (started by this lab, pid {own})")
                continue
            if daemons.daemon_running(name):
                info(f"  {name}: already running, not this lab's (left alone)")
                started = [s for s in started if s != name]
                continue
            if dry_run:
                info(f"  would start: {name} -d -p {paths.run / (name + '.pid')}")
                continue
            if not started and "ip_forward" not in rec:
                # host state before libvirt first came up in this lab's care
                rec["ip_forward"] = IP_FORWARD.read_text().strip() if IP_FORWARD.exists() else None
                rec["fw_before"] = firewall.chains()
            pid = daemons.start(paths, name)
            started.append(name)
            info(f"  {name}: started (pid {pid})")
        if dry_run:
            return
        rec["started"] = sorted(set(started), key=daemons.DAEMONS.index)
        _save_record(paths, rec)
        daemons.wait_libvirt()


def install_test_tools(paths: LabPaths) -> None:
    """apt-get the validators the host tests run (no daemon is started)."""
    ensure_dirs(paths)
    with stage("test tools (apache2, postfix, sendmail-cf, dnsmasq, docker-compose, shellcheck, chromium ...)",
               log=paths.logs / "host-prepare.log", hint="read the log; `apt-get install` must work as root"):
        missing = missing_packages(TEST_PACKAGES) if shutil.which("dpkg-query") else TEST_PACKAGES
        if not missing:
            info("  all test tools present (apt skipped)")
            return
        if not is_debian_like():
            raise StageFailed(f"install these yourself (Debian names): {' '.join(missing)}")
        info(f"  installing: {' '.join(missing)}")
        run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select Local only\n"
            "postfix postfix/mailname string ente-lab.invalid\n", check=False)
        _apt_install(paths, missing)


# ------------------------------------------------------------------ restore
def restore(paths: LabPaths) -> None:
    rec = _load_record(paths)
    started = rec.get("started", [])
    with stage("host restore", log=paths.logs / "host-prepare.log"):
        if not started:
            info("  nothing to undo: this lab started no daemons")
            record_file(paths).unlink(missing_ok=True)
            return
        if "libvirtd" in started and daemons.libvirt_ready():
            foreign = daemons.foreign_running_domains(paths.lab_id)
            if foreign:
                warn(f"libvirtd left running: it also runs {', '.join(foreign)} (not this lab's)")
                return
        for name in reversed(started):
            pidfile = paths.run / f"{name}.pid"
            pid = daemons.pidfile_pid(pidfile)
            if pid and daemons.pid_alive(pid, name):
                daemons.stop(pid, name)
                info(f"  {name}: stopped (pid {pid})")
            pidfile.unlink(missing_ok=True)
        # libvirtd leaves dnsmasq for its networks behind only if they were active;
        # vagrant destroy removes the lab network. Now undo libvirt's host changes.
        removed = firewall.remove_new_chains(rec.get("fw_before", {}))
        if removed:
            info(f"  removed firewall chains: {', '.join(removed)}")
        before = rec.get("ip_forward")
        if before is not None and IP_FORWARD.exists() and IP_FORWARD.read_text().strip() != before:
            IP_FORWARD.write_text(before + "\n")
            info(f"  net.ipv4.ip_forward restored to {before}")
        record_file(paths).unlink(missing_ok=True)
