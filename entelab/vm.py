"""VM lifecycle through python-vagrant: up, down, destroy, ssh, state.

Vagrant runs in the checkout (the top-level Vagrantfile) with VAGRANT_HOME under
the lab's state dir; its output goes to ``<logs>/vagrant.log`` and the user sees
one line per stage. Every libvirt object carries the lab id: storage pool
``<lab_id>``, domain ``<lab_id>_default``, network ``<lab_id>-mgmt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .progress import StageFailed, info, stage, warn
from .state import LabPaths, ensure_dirs

URI = "qemu:///system"
MACHINE = "default"


def virsh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise StageFailed(f"virsh {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def domain_name(p: LabPaths) -> str:
    return f"{p.lab_id}_{MACHINE}"


def network_name(p: LabPaths) -> str:
    return f"{p.lab_id}-mgmt"


def domain_exists(p: LabPaths) -> bool:
    return virsh("dominfo", domain_name(p)).returncode == 0


def domain_state(p: LabPaths) -> str:
    proc = virsh("domstate", domain_name(p))
    return proc.stdout.strip() if proc.returncode == 0 else "not created"


# ------------------------------------------------------------------ libvirt objects
def ensure_pool(p: LabPaths) -> None:
    """Storage pool <lab_id> (dir at p.pool), defined, started and autostarted.

    Copes with leftovers: a pool of that name pointing elsewhere is re-pointed
    only if it holds no volumes; an inactive one is started. Not autostarted: every
    step that needs it calls this first.
    """
    ensure_dirs(p)
    name = p.lab_id
    info_ = virsh("pool-info", name)
    if info_.returncode == 0:
        xml = virsh("pool-dumpxml", name, check=True).stdout
        target = ET.fromstring(xml).findtext("./target/path") or ""
        if Path(target) != p.pool:
            vols = virsh("vol-list", "--pool", name).stdout.splitlines()[2:]
            if any(v.strip() for v in vols):
                raise StageFailed(f"storage pool {name} points at {target}, not {p.pool}, and holds "
                                  f"volumes; check `virsh pool-dumpxml {name}`")
            virsh("pool-destroy", name)
            virsh("pool-undefine", name, check=True)
        elif "running" in info_.stdout:
            virsh("pool-refresh", name)
            return
        else:
            virsh("pool-start", name, check=True)
            return
    virsh("pool-define-as", name, "dir", "--target", str(p.pool), check=True)
    virsh("pool-build", name)
    virsh("pool-start", name, check=True)


# ------------------------------------------------------------------ vagrant
def provider(p: LabPaths) -> str:
    """libvirt (run here) or virtualbox (the branch for users who have it)."""
    try:
        return json.loads(p.vagrant_json.read_text()).get("provider") or "libvirt"
    except (OSError, ValueError):
        return "libvirt"


def vagrant_env(p: LabPaths) -> dict:
    env = dict(os.environ, VAGRANT_HOME=str(p.vagrant_home), VAGRANT_CHECKPOINT_DISABLE="1",
               VAGRANT_NO_COLOR="1", VAGRANT_DEFAULT_PROVIDER=provider(p),
               ENTE_LAB_STATE_DIR=str(p.home), ENTE_LAB_ID=p.lab_id)
    return env


def log_path(p: LabPaths) -> Path:
    return p.logs / "vagrant.log"


def _vagrant(p: LabPaths):
    import vagrant

    ensure_dirs(p)
    log = log_path(p)
    cm = vagrant.make_file_cm(str(log), mode="a")
    v = vagrant.Vagrant(root=str(p.root), out_cm=cm, err_cm=cm, env=vagrant_env(p))
    return v


def _run_vagrant(p: LabPaths, *args: str) -> None:
    """Run `vagrant ARGS --no-tty` with output appended to the log."""
    log = log_path(p)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ vagrant {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.call(["vagrant", *args], stdout=fh, stderr=subprocess.STDOUT,
                             cwd=p.root, env=vagrant_env(p), stdin=subprocess.DEVNULL)
    if rc != 0:
        raise StageFailed(f"vagrant {args[0]} exited {rc} (see {log})")


def vagrant_status(p: LabPaths) -> str:
    """Vagrant's view: running, shutoff, not_created, ..."""
    try:
        return _vagrant(p).status()[0].state or "unknown"
    except Exception:  # noqa: BLE001 - vagrant not ready / not configured
        return "unknown"


def _clean_leftovers(p: LabPaths) -> None:
    """Before creating a VM: remove what an earlier, interrupted run of this lab left.

    Only objects named with this lab's id are touched: a domain libvirt knows but
    Vagrant does not track (its .vagrant machine id is gone), and the VM volume
    when no domain uses it.
    """
    machine_id = p.root / ".vagrant" / "machines" / MACHINE / "libvirt" / "id"
    dom = domain_name(p)
    exists = domain_exists(p)
    if exists and machine_id.exists():
        return
    if exists:
        warn(f"removing leftover domain {dom} (Vagrant no longer tracks it)")
        virsh("destroy", dom)
        virsh("undefine", dom, "--nvram")
    vol = f"{dom}.img"
    if virsh("vol-info", "--pool", p.lab_id, vol).returncode == 0:
        warn(f"removing leftover volume {vol} (no domain uses it)")
        virsh("vol-delete", "--pool", p.lab_id, vol)


def up(paths: LabPaths) -> None:
    if not paths.vagrant_json.exists():
        warn(f"{paths.vagrant_json} missing: the Vagrantfile uses its defaults (run lab.render)")
    if provider(paths) != "libvirt":
        with stage(f"vagrant up ({provider(paths)}; not run on the lab's own machines)",
                   log=log_path(paths)):
            _run_vagrant(paths, "up", "--provider", provider(paths), "--no-tty", "--no-provision")
        _forget_ssh_config(paths)
        return
    ensure_pool(paths)
    _clean_leftovers(paths)
    before = domain_state(paths)
    name = "vagrant up (boot)" if before in ("not created", "shut off") else "vagrant up"
    with stage(f"{name}: was {before}", log=log_path(paths),
               hint=f"see the serial console log {paths.logs / 'console.log'} and `invoke lab.status`"):
        _run_vagrant(paths, "up", "--provider", "libvirt", "--no-tty", "--no-provision")
    _forget_ssh_config(paths)


def down(paths: LabPaths) -> None:
    with stage("vagrant halt", log=log_path(paths)):
        if not (shutil.which("virsh") and virsh("uri").returncode == 0):
            info("  libvirt is not running (`invoke host.prepare` starts it): nothing to halt")
            return
        if domain_state(paths) != "running":
            info(f"  already {domain_state(paths)}")
            return
        _run_vagrant(paths, "halt")
    _forget_ssh_config(paths)


def destroy(paths: LabPaths, yes: bool = False) -> None:
    if not yes:
        if not sys.stdin.isatty():
            raise StageFailed("lab.destroy deletes the VM and its disk: pass --yes to confirm")
        answer = input(f"Destroy VM {domain_name(paths)} and its disk? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            info("kept")
            return
    with stage("vagrant destroy", log=log_path(paths)):
        if shutil.which("virsh") and virsh("uri").returncode == 0:
            ensure_pool(paths)
            _run_vagrant(paths, "destroy", "--force")
            _clean_leftovers(paths)
            net = network_name(paths)
            if virsh("net-info", net).returncode == 0:
                virsh("net-destroy", net)
                virsh("net-undefine", net)
        else:
            info("  libvirt is not running: nothing to destroy")
    _forget_ssh_config(paths)


def ssh(paths: LabPaths, command: str = "") -> int:
    args = ["vagrant", "ssh"]
    if command:
        args += ["-c", command, "--", "-T"]
    proc = subprocess.run(args, cwd=paths.root, env=vagrant_env(paths))
    if command and proc.returncode:
        raise StageFailed(f"command exited {proc.returncode} in the VM")
    return proc.returncode


# ------------------------------------------------------------------ state
def ssh_config_cache(p: LabPaths) -> Path:
    return p.run / "ssh-config.json"


def _forget_ssh_config(p: LabPaths) -> None:
    ssh_config_cache(p).unlink(missing_ok=True)


def ssh_info(p: LabPaths, refresh: bool = False) -> dict:
    """{user, host, port, keyfile} from python-vagrant, cached in the run dir."""
    cache = ssh_config_cache(p)
    if not refresh and cache.exists():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    v = _vagrant(p)
    uhp = v.user_hostname_port()
    user, rest = uhp.split("@", 1)
    host, port = rest.rsplit(":", 1)
    data = {"user": user, "host": host, "port": int(port), "keyfile": v.keyfile()}
    cache.write_text(json.dumps(data) + "\n")
    return data


def read_accel(p: LabPaths) -> str:
    env = os.environ.get("ENTE_LAB_ACCEL")
    if env in ("kvm", "qemu"):
        return f"{env} (ENTE_LAB_ACCEL)"
    try:
        return (p.home / "accel").read_text().strip() + " (probed)"
    except OSError:
        return "qemu (default)"


def state(paths: LabPaths) -> dict:
    dom = domain_state(paths) if shutil.which("virsh") and virsh("uri").returncode == 0 \
        else "libvirt not running"
    address = ""
    if dom == "running":
        try:
            address = ssh_info(paths)["host"]
        except Exception:  # noqa: BLE001 - shown as unknown
            address = "?"
    return {"state": dom, "provider": provider(paths), "accel": read_accel(paths),
            "address": address}
