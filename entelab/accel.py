"""Acceleration probe: does a KVM guest really run here?

``/dev/kvm`` opening is not enough (on nested hosts a KVM guest can hang in its
kernel), so the probe boots the box's own kernel + initrd once under
``-accel kvm`` for at most 60 s and waits for a marker on the serial console
that the kernel prints only after it finished booting. The answer ("kvm" or
"qemu") is cached in ``<state_dir>/accel`` (the Vagrantfile reads it);
``ENTE_LAB_ACCEL=kvm|qemu`` overrides both the probe and the cache.
"""

from __future__ import annotations

import os
import selectors
import shutil
import tarfile
import time
from pathlib import Path

from .hostrun import spawn
from .progress import info, stage
from .state import LabPaths

ENV = "ENTE_LAB_ACCEL"
CHOICES = ("kvm", "qemu")
MARKER = b"Run /init as init process"
TIMEOUT = 60.0


def cache_file(p: LabPaths) -> Path:
    return p.home / "accel"


def kvm_device_usable(dev: Path = Path("/dev/kvm")) -> bool:
    try:
        fd = os.open(dev, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _kernel_and_initrd(p: LabPaths) -> tuple[Path, Path] | None:
    """The box's kernel/initrd: from Vagrant's unpacked box, else the cached box file."""
    for d in sorted(p.vagrant_home.glob("boxes/*/*/libvirt")):
        if (d / "vmlinuz").exists() and (d / "initrd.img").exists():
            return d / "vmlinuz", d / "initrd.img"
    boxes = sorted(p.box_cache.glob("debian12-*.box"))
    if not boxes:
        return None
    out = p.run / "probe"
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(boxes[-1]) as tar:
        for name in ("vmlinuz", "initrd.img"):
            member = tar.getmember(name)
            member.name = name
            tar.extract(member, out, filter="data")
    return out / "vmlinuz", out / "initrd.img"


def trial_boot(kernel: Path, initrd: Path, accel: str = "kvm", timeout: float = TIMEOUT,
               log: Path | None = None, marker: bytes = MARKER) -> bool:
    """Boot kernel+initrd under ``accel``; True when ``marker`` shows on the serial console."""
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    cpu = "host" if accel == "kvm" else "qemu64"
    cmd = [qemu, "-accel", accel, "-cpu", cpu, "-m", "512", "-smp", "1",
           "-display", "none", "-monitor", "none", "-serial", "stdio", "-nodefaults",
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 root=/dev/null"]
    seen = b""
    proc = spawn(cmd)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    found = False
    try:
        while time.monotonic() < deadline and not found:
            if not sel.select(timeout=1):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            found = marker in seen
    finally:
        proc.kill()
        proc.wait()
        sel.close()
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(b"$ " + " ".join(cmd).encode() + b"\n" + seen)
    return found


def _decided(p: LabPaths) -> tuple[str, str] | None:
    """(acceleration, where the answer comes from) without probing: env > cache."""
    env = os.environ.get(ENV, "")
    if env in CHOICES:
        return env, ENV
    try:
        cached = cache_file(p).read_text().strip()
    except OSError:
        return None
    return (cached, "probed") if cached in CHOICES else None


def describe(p: LabPaths) -> str:
    """What lab.status shows: the acceleration and where it was decided."""
    decided = _decided(p)
    return f"{decided[0]} ({decided[1]})" if decided else "qemu (default)"


def probe(p: LabPaths, refresh: bool = False) -> str:
    """The acceleration to use on this host: env > cache > one trial boot."""
    decided = _decided(p)
    if decided and (decided[1] == ENV or not refresh):
        return decided[0]
    cache = cache_file(p)
    log = p.logs / "accel-probe.log"
    with stage("acceleration probe (one trial boot, at most 60 s)", log=log):
        from .daemons import kvm_usable_by_qemu_user

        if not kvm_device_usable():
            result, why = "qemu", "/dev/kvm cannot be opened"
        elif kvm_usable_by_qemu_user() is False:
            result, why = "qemu", ("libvirt's QEMU user (libvirt-qemu) cannot open /dev/kvm "
                                   "(add it to /dev/kvm's group with rw to use KVM)")
        else:
            files = _kernel_and_initrd(p)
            if files is None:
                info("  qemu: no box kernel to boot yet (run lab.box); not cached")
                return "qemu"
            if trial_boot(*files, accel="kvm", log=log):
                result, why = "kvm", "a KVM guest booted its kernel"
            else:
                result, why = "qemu", f"a KVM guest did not finish booting within 60 s (see {log})"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(result + "\n")
        info(f"  {result}: {why} (cached in {cache}; override with {ENV}=kvm|qemu)")
    return result
