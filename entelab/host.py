"""Host preparation: install what the lab needs, start libvirt, undo it afterwards.

``prepare`` installs the Debian packages without letting their maintainer scripts
start daemons (a temporary ``policy-rc.d``), and, where systemd is not PID 1,
starts ``virtlogd`` and ``libvirtd`` itself with pidfiles in the lab's run dir.
Everything it started or changed is recorded in ``<run>/host.json`` so that
``restore`` stops only those daemons and removes only what libvirt left behind
because of this run (its firewall chains, ``net.ipv4.ip_forward``).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import time
from pathlib import Path

from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from .errors import StageFailed
from .hostrun import LIBVIRT_URI, run, virsh
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
]

DAEMONS = ("virtlogd", "libvirtd")
LIBVIRT_CHAINS = {
    "filter": ["LIBVIRT_INP", "LIBVIRT_OUT", "LIBVIRT_FWO", "LIBVIRT_FWI", "LIBVIRT_FWX"],
    "nat": ["LIBVIRT_PRT"],
    "mangle": ["LIBVIRT_PRT"],
}
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
KVM_DEVICE = Path("/dev/kvm")
QEMU_USER = "libvirt-qemu"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


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


def _pid_alive(pid: int, name: str) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == name[:15]


def _pidfile_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def daemon_running(name: str) -> bool:
    """Is a process of this name running (anyone's)? Read-only check via pgrep."""
    return run(["pgrep", "-x", name], check=False).ok


def libvirt_ready() -> bool:
    return virsh("list", "--name", timeout=30).ok


def wait_libvirt(timeout: float = 60) -> None:
    poll = retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.5),
                 retry=retry_if_result(lambda ok: not ok), retry_error_callback=lambda s: False)
    if not poll(libvirt_ready)():
        raise StageFailed(f"libvirt did not answer `virsh -c {LIBVIRT_URI} list` "
                          f"within {timeout:.0f}s")


def _fw_chains() -> dict[str, list[str]]:
    """libvirt chains present now, per table (empty when iptables is missing)."""
    found: dict[str, list[str]] = {}
    if not shutil.which("iptables"):
        return found
    for table, chains in LIBVIRT_CHAINS.items():
        out = run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        lines = out.splitlines()
        present = [c for c in chains if f"-N {c}" in lines]
        if present:
            found[table] = present
    return found


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


def kvm_usable_by_qemu_user(dev: Path = KVM_DEVICE, user: str = QEMU_USER) -> bool | None:
    """Can libvirt's QEMU user open /dev/kvm? None when there is no /dev/kvm."""
    try:
        st = dev.stat()
    except OSError:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == pw.pw_uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in groups:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def daemon_command(p: LabPaths, name: str, pidfile: Path) -> list[str]:
    """How to start a daemon. libvirtd gets /dev/kvm masked when its QEMU user cannot
    use it anyway: libvirt would otherwise see "KVM usable" disagree with its cached
    QEMU capabilities and re-probe QEMU on every API call (~8-17 s each here, about
    two minutes per `vagrant up`). The mask lives only in libvirtd's own mount
    namespace, together with a copy of qemu.conf that adds `namespaces = []` (libvirt
    cannot move a masked /dev/kvm into a per-domain /dev); the host's /dev/kvm and
    /etc/libvirt/qemu.conf are not touched."""
    exe = shutil.which(name) or f"/usr/sbin/{name}"
    cmd = [exe, "-d", "-p", str(pidfile)]
    if name != "libvirtd" or kvm_usable_by_qemu_user() is not False or not shutil.which("unshare") \
            or not QEMU_CONF.exists():
        return cmd
    mask = p.run / "kvm-masked"
    mask.touch()
    mask.chmod(0)
    conf = p.run / "qemu.conf"
    conf.write_text(QEMU_CONF.read_text() + "\n# ente-lab: /dev/kvm is masked for libvirtd\n"
                    "namespaces = []\n")
    conf.chmod(0o600)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" /dev/kvm && mount --bind "$2" "$3" && shift 3 && exec "$@"',
            "sh", str(mask), str(conf), str(QEMU_CONF), *cmd]


def _start_daemon(p: LabPaths, name: str) -> int:
    pidfile = p.run / f"{name}.pid"
    old = _pidfile_pid(pidfile)
    if old is not None and not _pid_alive(old, name):
        pidfile.unlink(missing_ok=True)          # stale pidfile from an earlier run
    exe = shutil.which(name) or f"/usr/sbin/{name}"
    log = p.logs / "host-prepare.log"
    cmd = daemon_command(p, name, pidfile)
    if cmd[0] == "unshare":
        info(f"  {name}: /dev/kvm masked in its mount namespace (its QEMU user cannot use it)")
    run(cmd, log=log)

    poll = retry(stop=stop_after_delay(20), wait=wait_fixed(0.2),
                 retry=retry_if_result(lambda pid: pid is None), retry_error_callback=lambda s: None)
    pid = poll(lambda: (lambda x: x if x and _pid_alive(x, name) else None)(_pidfile_pid(pidfile)))()
    if pid is None:
        raise StageFailed(f"{name} did not start (no live pid in {pidfile}); "
                          f"try `{exe} -v` in a shell to see why")
    return pid


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
            if not libvirt_ready():
                if dry_run:
                    info("  would run: systemctl start libvirtd")
                    return
                run(["systemctl", "start", "libvirtd"], log=paths.logs / "host-prepare.log")
            wait_libvirt()
            return
        started = list(rec.get("started", []))
        for name in DAEMONS:
            own = _pidfile_pid(paths.run / f"{name}.pid")
            if name in started and own and _pid_alive(own, name):
                info(f"  {name}: running (started by this lab, pid {own})")
                continue
            if daemon_running(name):
                info(f"  {name}: already running, not this lab's (left alone)")
                started = [s for s in started if s != name]
                continue
            if dry_run:
                info(f"  would start: {name} -d -p {paths.run / (name + '.pid')}")
                continue
            if not started and "ip_forward" not in rec:
                # host state before libvirt first came up in this lab's care
                rec["ip_forward"] = IP_FORWARD.read_text().strip() if IP_FORWARD.exists() else None
                rec["fw_before"] = _fw_chains()
            pid = _start_daemon(paths, name)
            started.append(name)
            info(f"  {name}: started (pid {pid})")
        if dry_run:
            return
        rec["started"] = sorted(set(started), key=DAEMONS.index)
        _save_record(paths, rec)
        wait_libvirt()


def install_test_tools(paths: LabPaths) -> None:
    """apt-get the validators the host tests run (no daemon is started)."""
    ensure_dirs(paths)
    with stage("test tools (apache2, postfix, sendmail-cf, dnsmasq, docker-compose, shellcheck ...)",
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
def _stop_pid(pid: int, name: str, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid, name):
        time.sleep(0.2)
    if _pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def _foreign_running_domains(lab_id: str) -> list[str]:
    out = virsh("list", "--name", timeout=30)
    return [d for d in out.stdout.split() if d and not d.startswith(lab_id + "_")]


def _remove_fw_chains(before: dict[str, list[str]]) -> list[str]:
    """Delete libvirt chains that were not there before this run, with the jumps to them."""
    removed = []
    for table, chains in _fw_chains().items():
        ours = [c for c in chains if c not in before.get(table, [])]
        if not ours:
            continue
        rules = run(["iptables", "-w", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in ours \
                    and parts[1] not in ours:
                run(["iptables", "-w", "-t", table, "-D", *parts[1:]], check=False)
        for chain in ours:
            run(["iptables", "-w", "-t", table, "-F", chain], check=False)
        for chain in ours:
            if run(["iptables", "-w", "-t", table, "-X", chain], check=False).ok:
                removed.append(f"{table}/{chain}")
            else:
                warn(f"firewall chain {table}/{chain} could not be removed "
                     f"(see `iptables -t {table} -S {chain}`)")
    return removed


def restore(paths: LabPaths) -> None:
    rec = _load_record(paths)
    started = rec.get("started", [])
    with stage("host restore", log=paths.logs / "host-prepare.log"):
        if not started:
            info("  nothing to undo: this lab started no daemons")
            record_file(paths).unlink(missing_ok=True)
            return
        if "libvirtd" in started and libvirt_ready():
            foreign = _foreign_running_domains(paths.lab_id)
            if foreign:
                warn(f"libvirtd left running: it also runs {', '.join(foreign)} (not this lab's)")
                return
        for name in reversed(started):
            pidfile = paths.run / f"{name}.pid"
            pid = _pidfile_pid(pidfile)
            if pid and _pid_alive(pid, name):
                _stop_pid(pid, name)
                info(f"  {name}: stopped (pid {pid})")
            pidfile.unlink(missing_ok=True)
        # libvirtd leaves dnsmasq for its networks behind only if they were active;
        # vagrant destroy removes the lab network. Now undo libvirt's host changes.
        removed = _remove_fw_chains(rec.get("fw_before", {}))
        if removed:
            info(f"  removed firewall chains: {', '.join(removed)}")
        before = rec.get("ip_forward")
        if before is not None and IP_FORWARD.exists() and IP_FORWARD.read_text().strip() != before:
            IP_FORWARD.write_text(before + "\n")
            info(f"  net.ipv4.ip_forward restored to {before}")
        record_file(paths).unlink(missing_ok=True)
