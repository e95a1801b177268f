"""VM lifecycle through python-vagrant: up, down, destroy, ssh, state.

Vagrant runs in the checkout (the top-level Vagrantfile) with VAGRANT_HOME under
the lab's state dir; its output goes to ``<logs>/vagrant.log`` and the user sees
one line per stage. Every libvirt object carries the lab id: storage pool
``<lab_id>``, domain ``<lab_id>_default``, network ``<lab_id>-mgmt``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import accel
from .errors import SettingsError, StageFailed
from .hostrun import LIBVIRT_URI, run, vagrant, vagrant_log, virsh
from .progress import info, stage, warn
from .state import LabPaths, ensure_dirs

MACHINE = "default"


def domain_name(p: LabPaths) -> str:
    return f"{p.lab_id}_{MACHINE}"


MGMT_SUFFIX = "-mgmt"


def network_name(p: LabPaths) -> str:
    return f"{p.lab_id}{MGMT_SUFFIX}"


def domain_exists(p: LabPaths) -> bool:
    return virsh("dominfo", domain_name(p)).ok


def domain_state(p: LabPaths) -> str:
    proc = virsh("domstate", domain_name(p))
    return proc.stdout.strip() if proc.ok else "not created"


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
    if info_.ok:
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


# ------------------------------------------------------------------ the lab network's address
# vagrant-libvirt looks a management network up by its *address* before its name: when
# another network (another lab's, a user's) already holds the address, it defines the
# domain against this lab's network name, which it never created, and `vagrant up` dies
# in the middle with "Network not found: no network with matching name '<lab>-mgmt'".
# lab.up checks first and says who holds the address and what to do.
@dataclass(frozen=True)
class NetFact:
    """A libvirt network as `virsh net-dumpxml` / `net-info` describe it."""
    name: str
    network: ipaddress.IPv4Network | None
    active: bool
    bridge: str = ""


@dataclass(frozen=True)
class IfFact:
    """An IPv4 address on a host interface (`ip -j -4 addr`)."""
    ifname: str
    network: ipaddress.IPv4Network


def libvirt_networks() -> list[NetFact]:
    out: list[NetFact] = []
    for name in virsh("net-list", "--all", "--name").stdout.split():
        xml = virsh("net-dumpxml", name)
        if not xml.ok:
            continue
        root = ET.fromstring(xml.stdout)
        net = None
        ip = root.find("./ip")
        if ip is not None and ip.get("address") and ":" not in ip.get("address", ""):
            mask = ip.get("prefix") or ip.get("netmask") or "24"
            net = ipaddress.IPv4Network(f"{ip.get('address')}/{mask}", strict=False)
        active = bool(re.search(r"^Active:\s+yes\b", virsh("net-info", name).stdout, re.M))
        bridge = root.find("./bridge")
        out.append(NetFact(name, net, active, bridge.get("name", "") if bridge is not None else ""))
    return out


def host_addresses() -> list[IfFact]:
    res = run(["ip", "-j", "-4", "addr"], check=False)
    try:
        links = json.loads(res.stdout) if res.ok else []
    except ValueError:
        return []
    return [IfFact(link.get("ifname", "?"),
                   ipaddress.IPv4Network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False))
            for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"]


def free_network(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network | None:
    """The first 192.168.N.0/24 (N from 121 up) that overlaps nothing in ``taken``."""
    for n in range(121, 255):
        cand = ipaddress.IPv4Network(f"192.168.{n}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return cand
    return None


def network_conflicts(mine: ipaddress.IPv4Network, own: str, networks: list[NetFact],
                      addresses: list[IfFact], avoid: Sequence[ipaddress.IPv4Network] = ()) -> str:
    """'' when ``mine`` is free; else the message that says who holds it and the fixes.
    ``own``: this lab's network name (it may hold the address: it is ours)."""
    bridges = {n.bridge for n in networks if n.bridge}
    holders = []
    for n in networks:
        if n.name != own and n.network is not None and n.network.overlaps(mine):
            lab = n.name.removesuffix(MGMT_SUFFIX) if n.name.endswith(MGMT_SUFFIX) else ""
            who = f" (another lab's: {lab}; its VM is {lab}_{MACHINE})" if lab.startswith("entelab-") else ""
            undo = (f"`./labctl lab.down` in that lab's checkout, or `virsh -c {LIBVIRT_URI} net-destroy "
                    f"{n.name}`" if n.active else f"`virsh -c {LIBVIRT_URI} net-undefine {n.name}`")
            holders.append((f"libvirt network {n.name!r} ({n.network}, "
                            f"{'active' if n.active else 'defined, inactive'}){who}", undo))
    for a in addresses:
        if a.ifname not in bridges and a.network.overlaps(mine):
            holders.append((f"host interface {a.ifname} ({a.network})", ""))
    if not holders:
        return ""
    taken = [n.network for n in networks if n.network is not None] + [a.network for a in addresses]
    free = free_network(taken + list(avoid))
    lines = [f"vm.management_network = {str(mine)!r}: already taken on this host by "
             + "; ".join(h for h, _ in holders) + "."]
    fixes = [u for _, u in holders if u]
    if fixes:
        lines.append("Free it: " + "; ".join(fixes) + ", or")
    lines.append("give this lab another address: `vm.management_network: "
                 f"{free or '192.168.N.0/24'}` in settings.local.yaml"
                 + (" (free here)" if free else "") + ".")
    return "\n".join(lines)


def check_network_free(p: LabPaths, management_network: str,
                       avoid: Sequence[ipaddress.IPv4Network] = ()) -> None:
    """Refuse (SettingsError, before anything is created) a management network address
    that another libvirt network or a host interface already holds."""
    msg = network_conflicts(ipaddress.IPv4Network(management_network), network_name(p),
                            libvirt_networks(), host_addresses(), avoid)
    if msg:
        raise SettingsError([msg], hint="`virsh -c qemu:///system net-list --all` lists the networks")


# ------------------------------------------------------------------ vagrant
def provider(p: LabPaths) -> str:
    """libvirt (run here) or virtualbox (the branch for users who have it)."""
    try:
        return json.loads(p.vagrant_json.read_text()).get("provider") or "libvirt"
    except (OSError, ValueError):
        return "libvirt"


def _vagrant(p: LabPaths):
    """python-vagrant, for the one query it answers well (ssh-config); its output
    goes to the lab's vagrant.log."""
    import vagrant as pyvagrant

    from .hostrun import vagrant_env

    ensure_dirs(p)
    cm = pyvagrant.make_file_cm(str(vagrant_log(p)), mode="a")
    return pyvagrant.Vagrant(root=str(p.root), out_cm=cm, err_cm=cm,
                             env=vagrant_env(p, provider(p)))


def libvirt_up() -> bool:
    return bool(shutil.which("virsh")) and virsh("uri").ok


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
        virsh("undefine", dom, "--nvram", "--snapshots-metadata")
    vol = f"{dom}.img"
    if virsh("vol-info", "--pool", p.lab_id, vol).ok:
        warn(f"removing leftover volume {vol} (no domain uses it)")
        virsh("vol-delete", "--pool", p.lab_id, vol)


def up(paths: LabPaths) -> None:
    if not paths.vagrant_json.exists():
        warn(f"{paths.vagrant_json} missing: the Vagrantfile uses its defaults (run lab.render)")
    if provider(paths) != "libvirt":
        with stage(f"vagrant up ({provider(paths)}; not run on the lab's own machines)",
                   log=vagrant_log(paths)):
            vagrant(paths, "up", "--provider", provider(paths), "--no-tty", "--no-provision",
                    provider=provider(paths))
        _forget_ssh_config(paths)
        return
    ensure_pool(paths)
    _clean_leftovers(paths)
    before = domain_state(paths)
    if before == "shut off" and _start_as_last_up(paths):
        return
    name = "vagrant up (boot)" if before in ("not created", "shut off") else "vagrant up"
    with stage(f"{name}: was {before}", log=vagrant_log(paths),
               hint=f"see the serial console log {paths.logs / 'console.log'} and `invoke lab.status`"):
        vagrant(paths, "up", "--provider", "libvirt", "--no-tty", "--no-provision")
    _forget_ssh_config(paths)
    last_up_file(paths).write_text(json.dumps({"inputs": up_inputs(paths)}) + "\n")


# ------------------------------------------------------------------ boot of a halted VM without Vagrant
# `vagrant up` of a halted VM spends about 30 s of its 41 s in Ruby, the plugin's checks
# and its SSH round trips before and after the boot (docs/benchmarks.md). When nothing
# Vagrant reads has changed since the last `vagrant up` (so it would define the same
# domain and network), the boot is a `virsh start` and a wait for SSH at the address the
# libvirt lease gives; anything changed (memory, cpus, acceleration, the Vagrantfile) goes
# through `vagrant up`, which applies it.
BOOT_TIMEOUT = 300


def last_up_file(p: LabPaths) -> Path:
    return p.run / "vagrant-up.json"


def up_inputs(p: LabPaths) -> str:
    """A digest of what `vagrant up` reads: the Vagrantfile, build/vagrant.json, the
    acceleration choice (ENTE_LAB_ACCEL, the probed one)."""
    h = hashlib.sha256()
    for f in (p.root / "Vagrantfile", p.vagrant_json, p.home / "accel"):
        h.update(f.read_bytes() if f.exists() else b"-")
        h.update(b"\0")
    h.update(os.environ.get("ENTE_LAB_ACCEL", "").encode())
    return h.hexdigest()


def _start_as_last_up(p: LabPaths) -> bool:
    try:
        last = json.loads(last_up_file(p).read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        return False
    if last != up_inputs(p) or not ssh_config_cache(p).exists():
        return False
    net, dom = network_name(p), domain_name(p)
    net_info = virsh("net-info", net)
    if not net_info.ok:
        return False                    # the lab network is gone: `vagrant up` defines it again
    with stage("boot: virsh start (nothing Vagrant reads changed since its last `vagrant up`)",
               hint=f"see the serial console log {p.logs / 'console.log'}; `virsh -c qemu:///system "
                    f"dominfo {dom}`; delete {last_up_file(p)} to boot through `vagrant up`"):
        if re.search(r"^Active:\s+no\b", net_info.stdout, re.M):
            virsh("net-start", net, check=True)
        virsh("start", dom, check=True)
        _wait_for_ssh(p)
    return True


def lease_address(p: LabPaths) -> str:
    """The VM's IPv4 address from the lab network's DHCP lease ('' while it has none)."""
    out = virsh("domifaddr", domain_name(p), "--source", "lease").stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "ipv4":
            return parts[3].split("/", 1)[0]
    return ""


def _wait_for_ssh(p: LabPaths) -> None:
    """SSH with the cached key and user, at the lease's address once there is one."""
    from .guest import Guest
    cache = ssh_config_cache(p)
    deadline = time.monotonic() + BOOT_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        addr = lease_address(p)
        data = json.loads(cache.read_text())
        if addr and addr != data["host"]:
            info(f"  new lease: {data['host']} -> {addr}")
            data["host"] = addr
            cache.write_text(json.dumps(data) + "\n")
        if addr:
            try:
                with Guest.connect(p, timeout=5) as g:
                    g.run("hostname", sudo=False, timeout=10)
                info(f"  SSH answers at {addr}")
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline, reported below
                last = exc
        time.sleep(1)
    raise StageFailed(f"the VM does not answer SSH {BOOT_TIMEOUT} s after `virsh start` ({last})",
                      hint=f"see the serial console log {p.logs / 'console.log'}")


def down(paths: LabPaths) -> None:
    with stage("halt", log=vagrant_log(paths)):
        if not libvirt_up():
            info("  libvirt is not running (`invoke host.prepare` starts it): nothing to halt")
            return
        if domain_state(paths) != "running":
            info(f"  already {domain_state(paths)}")
            return
        _halt_through_libvirt(paths)


def _halt_through_libvirt(paths: LabPaths, timeout: float = 240) -> None:
    """Shut the VM down through libvirt: ACPI, so systemd stops rc-slackware.service and
    rc.M stops every service, as `vagrant halt` would, without Vagrant's 15-20 s of Ruby
    start-up and checks (and without its need for a DHCP lease it can find). Powered off
    only as a last resort. The SSH settings stay cached for the next boot's `virsh start`."""
    info(f"  ACPI shutdown of {domain_name(paths)} (rc.M stops the services)")
    virsh("shutdown", domain_name(paths))
    deadline = time.monotonic() + timeout
    while domain_state(paths) != "shut off" and time.monotonic() < deadline:
        time.sleep(2)
    if domain_state(paths) != "shut off":
        warn(f"no clean shutdown in {timeout:.0f} s: powering the VM off (virsh destroy)")
        virsh("destroy", domain_name(paths))
    if domain_state(paths) != "shut off":
        raise StageFailed(f"{domain_name(paths)} is still {domain_state(paths)}",
                          hint=f"virsh -c qemu:///system destroy {domain_name(paths)}")


def destroy(paths: LabPaths, yes: bool = False) -> None:
    if not yes:
        if not sys.stdin.isatty():
            raise StageFailed("lab.destroy deletes the VM and its disk: pass --yes to confirm")
        answer = input(f"Destroy VM {domain_name(paths)} and its disk? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            info("kept")
            return
    with stage("vagrant destroy", log=vagrant_log(paths)):
        if libvirt_up():
            ensure_pool(paths)
            vagrant(paths, "destroy", "--force")
            _clean_leftovers(paths)
            net = network_name(paths)
            if virsh("net-info", net).ok:
                virsh("net-destroy", net)
                virsh("net-undefine", net)
        else:
            info("  libvirt is not running: nothing to destroy")
    _forget_ssh_config(paths)


def ssh(paths: LabPaths, command: str = "", tty: bool = False) -> int:
    """A shell in the VM, or one command (``tty`` for an interactive one)."""
    from .hostrun import interactive, vagrant_env
    args = ["vagrant", "ssh"]
    if command:
        args += ["-c", command, "--", "-t" if tty else "-T"]
    rc = interactive(args, cwd=paths.root, env=vagrant_env(paths, provider(paths)))
    if command and rc:
        raise StageFailed(f"command exited {rc} in the VM")
    return rc


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
    try:
        uhp = v.user_hostname_port()
        user, rest = uhp.split("@", 1)
        host, port = rest.rsplit(":", 1)
        data = {"user": user, "host": host, "port": int(port), "keyfile": v.keyfile()}
    except Exception as exc:  # noqa: BLE001 - python-vagrant raises CalledProcessError and others
        raise StageFailed(f"Vagrant cannot tell how to reach the VM ({exc})",
                          hint="./labctl lab.status; ./labctl lab.up",
                          log=str(vagrant_log(p))) from None
    cache.write_text(json.dumps(data) + "\n")
    return data


def state(paths: LabPaths) -> dict:
    dom = domain_state(paths) if libvirt_up() else "libvirt not running"
    address = ""
    if dom == "running":
        try:
            address = ssh_info(paths)["host"]
        except Exception:  # noqa: BLE001 - shown as unknown
            address = "?"
    return {"state": dom, "provider": provider(paths), "accel": accel.describe(paths),
            "address": address}
