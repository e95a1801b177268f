"""The host daemons the lab starts itself where systemd is not PID 1 (virtlogd,
libvirtd): start with a pidfile, find, stop; and whether libvirt's QEMU user can
use /dev/kvm (when it cannot, libvirtd runs with /dev/kvm masked, see
``daemon_command``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import time
from pathlib import Path

from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from .errors import StageFailed
from .hostrun import LIBVIRT_URI, run, virsh
from .progress import info
from .state import LabPaths

DAEMONS = ("virtlogd", "libvirtd")
KVM_DEVICE = Path("/dev/kvm")
QEMU_USER = "libvirt-qemu"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def pid_alive(pid: int, name: str) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == name[:15]


def pidfile_pid(pidfile: Path) -> int | None:
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


def start(p: LabPaths, name: str) -> int:
    pidfile = p.run / f"{name}.pid"
    old = pidfile_pid(pidfile)
    if old is not None and not pid_alive(old, name):
        pidfile.unlink(missing_ok=True)          # stale pidfile from an earlier run
    exe = shutil.which(name) or f"/usr/sbin/{name}"
    log = p.logs / "host-prepare.log"
    cmd = daemon_command(p, name, pidfile)
    if cmd[0] == "unshare":
        info(f"  {name}: /dev/kvm masked in its mount namespace (its QEMU user cannot use it)")
    run(cmd, log=log)

    poll = retry(stop=stop_after_delay(20), wait=wait_fixed(0.2),
                 retry=retry_if_result(lambda pid: pid is None), retry_error_callback=lambda s: None)
    pid = poll(lambda: (lambda x: x if x and pid_alive(x, name) else None)(pidfile_pid(pidfile)))()
    if pid is None:
        raise StageFailed(f"{name} did not start (no live pid in {pidfile}); "
                          f"try `{exe} -v` in a shell to see why")
    return pid


def stop(pid: int, name: str, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid, name):
        time.sleep(0.2)
    if pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def foreign_running_domains(lab_id: str) -> list[str]:
    out = virsh("list", "--name", timeout=30)
    return [d for d in out.stdout.split() if d and not d.startswith(lab_id + "_")]
