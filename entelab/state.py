"""Where a lab keeps its state, and the id every libvirt object carries.

One directory per lab (per checkout): VAGRANT_HOME, the libvirt storage pool,
pidfiles, logs and the box cache. It lives outside /root (which is 0700) so the
``libvirt-qemu`` user can traverse it; ENTE_LAB_HOME overrides the location.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_BASE = Path("/var/lib/ente-lab")


def lab_id(root: Path = ROOT) -> str:
    """Stable id for a checkout: 'entelab-' + 8 hex digits of its real path."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return f"entelab-{digest}"


@dataclass(frozen=True)
class LabPaths:
    root: Path          # the checkout
    lab_id: str
    home: Path          # per-lab state directory
    build: Path         # rendered tree + manifest + vagrant.json (in the checkout)

    @property
    def rendered(self) -> Path:
        return self.build / "rootfs"

    @property
    def manifest(self) -> Path:
        return self.build / "manifest.json"

    @property
    def vagrant_json(self) -> Path:
        return self.build / "vagrant.json"

    @property
    def secrets(self) -> Path:
        return self.root / ".lab-secrets.yaml"

    @property
    def vagrant_home(self) -> Path:
        return self.home / "vagrant.d"

    @property
    def pool(self) -> Path:
        return self.home / "pool"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def box_cache(self) -> Path:
        return self.home / "boxes"


def default_box_name(lid: str) -> str:
    """The lab's Vagrant box: one per lab, so labs never share or remove each other's."""
    return f"ente-lab/debian12-{lid}"


def paths(root: Path = ROOT) -> LabPaths:
    lid = lab_id(root)
    home = Path(os.environ.get("ENTE_LAB_HOME") or STATE_BASE / lid)
    return LabPaths(root=root, lab_id=lid, home=home, build=root / "build")


def ensure_dirs(p: LabPaths) -> None:
    """Create the state tree, traversable (0711) by libvirt-qemu all the way up."""
    for d in (p.home, p.vagrant_home, p.pool, p.run, p.logs, p.box_cache):
        d.mkdir(parents=True, exist_ok=True)
    node = p.home
    while node != node.parent:
        try:
            mode = node.stat().st_mode
            if not mode & 0o001:
                node.chmod(mode | 0o011)
        except PermissionError:
            break
        node = node.parent
