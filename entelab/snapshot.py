"""Snapshots and suspend/resume of the lab VM (issue 11).

A snapshot is a libvirt *internal* snapshot of the running domain
``<lab_id>_default``: disk and memory, stored inside the VM's own qcow2 volume
in the lab's pool. Restoring one brings back the exact running lab (processes,
pebble's in-memory root and accounts, containers) in seconds, where a halt and a
boot cost minutes under TCG.

We call virsh directly rather than ``vagrant snapshot``: vagrant-libvirt's
snapshot actions are the same libvirt calls (snapshot-create / revert of an
internal qcow2 snapshot), but every Vagrant call first starts Ruby and loads the
plugin (2-5 s here, more than the save itself). Vagrant still sees these
snapshots (``vagrant snapshot list``) and ``vagrant destroy`` removes them.

After a restore or a resume the guest is brought back to *now* (``recover``):
its clock restarts from the moment of the save (there is no NTP in the box), so
it is set again (RTC, else the host's time); every enabled rc.d service is
checked (and started once if down); the pebble root of the restored guest is
republished to the host state dir (a snapshot's pebble may hold another root than
the one last published) and the served certificate is verified from the host
with it, over the VM's own lab network.

Disk cost and cap: each snapshot stores the guest's memory state (about what the
guest uses of its RAM) plus the disk clusters that change afterwards. The lab
keeps at most ``MAX_SNAPSHOTS`` (``ENTE_LAB_MAX_SNAPSHOTS`` overrides) and wants
room for one full memory image on the pool's filesystem before it saves.
``lab.forget`` deletes one; qcow2 discards the freed clusters, so the volume's
allocated size shrinks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from . import certs, hostrun, vm
from .errors import EXIT_BAD_INPUT, LabError, StageFailed
from .guest import Guest
from .progress import console, info, stage, warn
from .settings import Settings
from .state import LabPaths

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,40}")
NAME_RULE = ("1-41 characters: lower-case letters, digits, '.', '_' or '-', "
             "starting with a letter or digit")
MAX_SNAPSHOTS = 5
MAX_CLOCK_SKEW = 2.0      # seconds; after recover the guest must be this close to the host
LIST_HINT = "./labctl lab.snapshots"
RELEASE = "_ente-lab-release"   # forget()'s throwaway snapshot; outside the name grammar


class BadInput(LabError):
    """The user's input is wrong; nothing was changed."""

    exit_code = EXIT_BAD_INPUT
    label = "error"


# ------------------------------------------------------------------ plumbing
def domain(paths: LabPaths) -> str:
    """The lab's libvirt domain (vagrant-libvirt's default_prefix + machine name)."""
    return vm.domain_name(paths)


def max_snapshots() -> int:
    raw = os.environ.get("ENTE_LAB_MAX_SNAPSHOTS", "")
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            raise BadInput(f"ENTE_LAB_MAX_SNAPSHOTS={raw!r} is not a number",
                           hint="set it to the number of snapshots to keep, e.g. 5") from None
    return MAX_SNAPSHOTS


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadInput(f"invalid snapshot name {name!r}: {NAME_RULE}",
                       hint="e.g. ./labctl lab.snapshot before-upgrade")
    return name


def _virsh(*args: str, hint: str = "") -> hostrun.Result:
    res = hostrun.virsh(*args)
    if not res.ok:
        raise StageFailed(f"virsh {' '.join(args)}: {res.output or f'exit {res.exited}'}",
                          hint=hint or f"virsh -c {hostrun.LIBVIRT_URI} dominfo <domain>")
    return res


def dominfo(paths: LabPaths) -> dict[str, str]:
    """``virsh dominfo`` as a dict ({} when the domain does not exist)."""
    res = hostrun.virsh("dominfo", domain(paths))
    if not res.ok:
        return {}
    out = {}
    for line in res.stdout.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip().lower()] = value.strip()
    return out


def _require_domain(paths: LabPaths) -> dict[str, str]:
    if hostrun.virsh("uri").exited != 0:
        raise StageFailed("libvirt is not running", hint="./labctl host.prepare starts it")
    di = dominfo(paths)
    if not di:
        raise StageFailed(f"the lab VM {domain(paths)} does not exist",
                          hint="./labctl lab.up creates it")
    return di


def suspended(di: dict[str, str]) -> bool:
    return di.get("managed save") == "yes"


def volume_path(paths: LabPaths) -> Path:
    """The VM's disk (the qcow2 file that holds the internal snapshots)."""
    res = _virsh("domblklist", domain(paths), "--details")
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "file" and parts[1] == "disk":
            return Path(parts[3])
    raise StageFailed(f"no disk found for {domain(paths)}",
                      hint=f"virsh -c {hostrun.LIBVIRT_URI} domblklist {domain(paths)} --details")


def allocated(path: Path) -> int:
    """Bytes the file really occupies (holes punched by qcow2 discards do not count)."""
    return path.stat().st_blocks * 512


def vm_state_sizes(path: Path) -> dict[str, int]:
    """Snapshot name -> size of its saved memory state, from the qcow2 header."""
    res = hostrun.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=False)
    if not res.ok:
        return {}
    try:
        data = json.loads(res.stdout)
    except ValueError:
        return {}
    return {s["name"]: int(s.get("vm-state-size", 0)) for s in data.get("snapshots", [])}


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _ledger_path(paths: LabPaths) -> Path:
    return paths.home / "snapshots.json"


def _ledger(paths: LabPaths) -> dict[str, dict]:
    try:
        data = json.loads(_ledger_path(paths).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_ledger(paths: LabPaths, data: dict[str, dict]) -> None:
    _ledger_path(paths).parent.mkdir(parents=True, exist_ok=True)
    _ledger_path(paths).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@dataclass
class Snapshot:
    name: str
    created: str          # local time as libvirt reports it
    state: str            # running (disk + memory) or shutoff (disk only)
    memory: int           # bytes of saved memory state
    added: int | None     # bytes the volume grew by when it was taken (ledger)


def names(paths: LabPaths) -> list[str]:
    res = hostrun.virsh("snapshot-list", domain(paths), "--name")
    if not res.ok:
        return []
    return [n.strip() for n in res.stdout.splitlines() if n.strip()]


def list_snapshots(paths: LabPaths) -> list[Snapshot]:
    res = hostrun.virsh("snapshot-list", domain(paths))
    if not res.ok:
        return []
    ledger = _ledger(paths)
    sizes = vm_state_sizes(volume_path(paths)) if res.stdout.strip() else {}
    out = []
    for line in res.stdout.splitlines()[2:]:
        # " pristine   2026-11-29 04:01:02 +0000   running"
        m = re.match(r"\s*(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+)\s+(\S+)", line)
        if m:
            name = m.group(1)
            out.append(Snapshot(name, m.group(2), m.group(3), sizes.get(name, 0),
                                ledger.get(name, {}).get("added")))
    return out


# ------------------------------------------------------------------ guest recovery
def _reach(paths: LabPaths, timeout: float = 90) -> Guest:
    """SSH into the guest, retrying while it comes back (the address is kept by libvirt)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return Guest.reach(paths)
        except Exception as exc:  # noqa: BLE001 - retried, reported below
            last = exc
            time.sleep(0.5)       # a reverted guest answers within a second or two
    raise StageFailed(f"the VM does not answer SSH {timeout:.0f}s after coming back: {last}",
                      hint=f"./labctl lab.status; the serial console log is {paths.logs / 'console.log'}")


def clock_skew(guest: Guest) -> float:
    """Guest clock minus host clock, seconds (half the round trip corrected)."""
    t0 = time.time()
    out = guest.run("date +%s.%N", sudo=False).stdout.strip()
    t1 = time.time()
    return float(out) - (t0 + t1) / 2


def fix_clock(guest: Guest) -> float:
    """Set the guest's clock after a restore/resume; returns the skew left (s).

    The guest's clock is measured against the host's and the offset is added to it in
    one step (``clock_settime``), so the SSH latency does not matter and any offset
    (the snapshot's hours) is corrected at once. (``hwclock --hctosys`` first, as
    before, waited for the RTC's next second: about 1 s of every restore under TCG, for
    a value the offset replaces anyway.)"""
    skew = clock_skew(guest)
    if abs(skew) > 0.2:
        guest.run("python3 -c 'import sys,time; time.clock_settime(time.CLOCK_REALTIME, "
                  f"time.time() + float(sys.argv[1]))' {-skew:.3f}",
                  shown="set the clock (clock_settime)")
        skew = clock_skew(guest)
    if abs(skew) > MAX_CLOCK_SKEW:
        raise StageFailed(f"the guest clock is still {skew:+.1f}s off the host's",
                          hint="./labctl lab.ssh --command 'date; sudo hwclock --show'")
    return skew


SERVICES_UP = r"""
enabled=$(/etc/rc.d/rc.M list | awk '$2 == "enabled" {print $1}')
# every status at once (each script's start-up is most of its cost under TCG); 4 is
# "not configured yet" (rc.ente before the first converge): nothing to start ...
down=$(for s in $enabled; do
    { /etc/rc.d/rc.$s status >/dev/null 2>&1; rc=$?; [ $rc = 0 ] || [ $rc = 4 ] || echo "$s"; } &
done; wait)
# ... a stopped one started once, in rc.M's order
failed=
for s in $enabled; do
    case " $(echo $down) " in
    *" $s "*)
        echo "restarting $s"
        /etc/rc.d/rc.$s start >/dev/null 2>&1 || failed="$failed $s" ;;
    esac
done
[ -z "$failed" ] || { echo "failed:$failed"; exit 1; }
"""


def ensure_services(guest: Guest) -> list[str]:
    """Every enabled rc.d service runs; start a stopped one once. Returns restarted ones."""
    res = guest.run(SERVICES_UP, check=False, shown="rc.d status of every enabled service")
    if not res.ok:
        raise StageFailed(f"services down after recovery: {res.output}",
                          hint="./labctl lab.ssh --command 'sudo /etc/rc.d/rc.M status'")
    return [line.split()[1] for line in res.stdout.splitlines() if line.startswith("restarting ")]


def address(guest: Guest) -> str:
    """The VM's address on its lab (management) network: where SSH reached it."""
    return str(guest.conn.host)


def host_tls_serial(addr: str, server_name: str, cafile: Path, port: int = 443,
                    timeout: float = 20) -> str:
    """Connect from the host to the VM and verify its certificate with ``cafile``."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((addr, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        cert = tls.getpeercert() or {}
    return str(cert.get("serialNumber", "?"))


def recover(paths: LabPaths, what: str, settings: Settings, served: bool = True,
            keep: bool = False) -> dict:
    """Bring a restored/resumed guest back to now and prove it works. ``served`` False:
    nothing serves https yet (the workshop base, before the article's Apache step), so the
    certificate file is verified against the republished root instead. ``keep``: the
    connection stays open for the caller, as ``result["guest"]`` (one SSH handshake,
    about 1.4 s under TCG, fewer)."""
    result: dict = {}
    hint = "./labctl lab.status"
    with stage(f"{what}: reach the VM over SSH", hint=hint):
        guest = _reach(paths)
    try:
        with stage(f"{what}: set the guest clock to the host's",
                  hint="./labctl lab.ssh --command 'date'"):
            result["skew"] = fix_clock(guest)
            info(f"  guest clock {result['skew']:+.2f}s from the host's")
        with stage(f"{what}: every enabled rc.d service running",
                  hint="./labctl lab.ssh --command 'sudo /etc/rc.d/rc.M status'"):
            result["restarted"] = ensure_services(guest)
            if result["restarted"]:
                warn(f"restarted: {', '.join(result['restarted'])}")
        with stage(f"{what}: republish the pebble root, verify TLS from the host",
                  hint="./labctl lab.renew issues a certificate from the running pebble"):
            root, changed = certs.publish_root(guest, paths)
            result["address"] = address(guest)
            result["root_changed"] = changed
            if served:
                result["serial"] = host_tls_serial(result["address"], settings.api_host, root)
                proof = f"https://{settings.api_host} at {result['address']} verifies"
            else:
                result["serial"] = certs.verify_file_chain(guest, settings, root)
                proof = (f"the certificate file verifies for {settings.api_host} "
                         "(nothing serves https before the workshop's Apache step)")
            info(f"  {root}{' (changed)' if changed else ' (unchanged)'}; {proof}, "
                 f"serial {result['serial']}")
        with stage(f"{what}: renew the VM's DHCP lease (libvirt's network)",
                   hint=f"virsh -c qemu:///system net-dhcp-leases {vm.network_name(paths)}"):
            guest.run(RENEW_LEASE, shown="restart dhclient (detached)")
    except BaseException:
        guest.close()
        raise
    if keep:
        result["guest"] = guest
    else:
        guest.close()
    return result


# The restored dhclient's timers come from the snapshot: after a few restores libvirt's
# lease (1 h) runs out unrenewed, and Vagrant no longer finds the VM ("inaccessible";
# `vagrant halt` then does nothing). A new dhclient asks for the address it holds (and
# keeps it while the lease lives); detached, so the SSH command returns at once.
RENEW_LEASE = r"""
for pf in /run/dhclient.*.pid; do
    [ -s "$pf" ] || continue
    dev=${pf#/run/dhclient.}; dev=${dev%.pid}
    kill -9 "$(cat "$pf")" 2>/dev/null
    setsid dhclient -4 -nw -pf "$pf" -lf "/var/lib/dhcp/dhclient.$dev.leases" "$dev" \
        </dev/null >/dev/null 2>&1 &
done
exit 0
"""


# ------------------------------------------------------------------ verbs
def _free_space_check(paths: LabPaths, di: dict[str, str]) -> None:
    mem_kib = int((di.get("used memory") or di.get("max memory") or "0").split()[0] or 0)
    need = mem_kib * 1024 + 512 * 2**20
    free = shutil.disk_usage(paths.pool).free
    if free < need:
        raise StageFailed(f"only {mib(free)} free under {paths.pool}; a snapshot may need "
                          f"{mib(need)} (memory state + changed disk)",
                          hint=f"{LIST_HINT} shows the sizes; ./labctl lab.forget NAME frees one")


def snapshot(paths: LabPaths, name: str) -> Snapshot:
    validate_name(name)
    di = _require_domain(paths)
    if suspended(di):
        raise StageFailed("the lab is suspended", hint="./labctl lab.resume, then snapshot")
    if di.get("state") != "running":
        raise StageFailed(f"the lab VM is {di.get('state')}: a snapshot saves a running lab "
                          "(disk and memory) so that a restore needs no boot",
                          hint="./labctl lab.up")
    existing = names(paths)
    if name in existing:
        raise BadInput(f"snapshot {name!r} already exists",
                       hint=f"./labctl lab.forget {name} first, or pick another name")
    cap = max_snapshots()
    if len(existing) >= cap:
        raise StageFailed(f"the lab already keeps {len(existing)} snapshots (cap {cap}: each "
                          f"holds a memory image): {', '.join(existing)}",
                          hint=f"./labctl lab.forget NAME ({LIST_HINT} shows sizes); "
                               "ENTE_LAB_MAX_SNAPSHOTS changes the cap")
    _free_space_check(paths, di)
    vol = volume_path(paths)
    before = allocated(vol)
    with stage(f"snapshot {name}: save disk + memory (virsh snapshot-create-as)",
              hint=f"virsh -c {hostrun.LIBVIRT_URI} snapshot-list {domain(paths)}"):
        taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _virsh("snapshot-create-as", domain(paths), "--name", name,
               "--description", f"ente-lab {paths.lab_id} {taken}")
    added = max(0, allocated(vol) - before)
    ledger = _ledger(paths)
    ledger[name] = {"added": added, "created": time.time()}
    _save_ledger(paths, ledger)
    memory = vm_state_sizes(vol).get(name, 0)
    info(f"  {name}: +{mib(added)} on disk now (memory state {mib(memory)}); later disk "
         f"changes add to it; {len(existing) + 1} of {cap} snapshots")
    return next((s for s in list_snapshots(paths) if s.name == name),
                Snapshot(name, "", "running", memory, added))


def _require_snapshot(paths: LabPaths, name: str) -> None:
    validate_name(name)
    _require_domain(paths)
    if name not in names(paths):
        have = ", ".join(names(paths)) or "none"
        raise BadInput(f"no snapshot {name!r} (have: {have})", hint=LIST_HINT)


def restore(paths: LabPaths, name: str, settings: Settings, keep: bool = False) -> dict:
    _require_snapshot(paths, name)
    di = dominfo(paths)
    if suspended(di):
        warn("the lab was suspended: its saved memory is discarded for the snapshot's")
        _virsh("managedsave-remove", domain(paths))
    with stage(f"restore {name}: revert disk + memory (virsh snapshot-revert)",
              hint=f"virsh -c {hostrun.LIBVIRT_URI} snapshot-info {domain(paths)} {name}"):
        _virsh("snapshot-revert", domain(paths), name, "--running")
    from .workshop import BASE_SNAPSHOT
    return recover(paths, f"restore {name}", settings, served=name != BASE_SNAPSHOT, keep=keep)


def forget(paths: LabPaths, name: str) -> int:
    _require_snapshot(paths, name)
    vol = volume_path(paths)
    before = allocated(vol)
    memory = vm_state_sizes(vol).get(name, 0)
    with stage(f"forget {name}: delete the snapshot (virsh snapshot-delete)",
              hint=f"virsh -c {hostrun.LIBVIRT_URI} snapshot-list {domain(paths)}"):
        _virsh("snapshot-delete", domain(paths), name)
    freed = max(0, before - allocated(vol))
    if freed < memory // 2 and dominfo(paths).get("state") == "running":
        # After a restore (QEMU's loadvm) the running disk's L1 table still points
        # at the snapshot's memory image, so deleting the snapshot frees nothing.
        # Saving a snapshot discards that area from the running disk (qcow2 does
        # it after every savevm): save a throwaway one and delete it.
        with stage(f"forget {name}: release its memory image still referenced since a restore",
                  hint=f"qemu-img info -U {vol}"):
            _virsh("snapshot-create-as", domain(paths), "--name", RELEASE,
                   "--description", "ente-lab: releases a restored memory image")
            _virsh("snapshot-delete", domain(paths), RELEASE)
        freed = max(0, before - allocated(vol))
    ledger = _ledger(paths)
    ledger.pop(name, None)
    _save_ledger(paths, ledger)
    info(f"  freed {mib(freed)} ({vol.name} now {mib(allocated(vol))} on disk)")
    return freed


def show(paths: LabPaths) -> list[Snapshot]:
    _require_domain(paths)
    snaps = list_snapshots(paths)
    vol = volume_path(paths)
    table = Table(title=f"snapshots of {domain(paths)} ({len(snaps)} of {max_snapshots()})")
    for col in ("name", "taken", "state", "memory state", "volume grew by when taken"):
        table.add_column(col)
    for s in snaps:
        table.add_row(s.name, s.created, s.state, mib(s.memory),
                      "?" if s.added is None else f"+{mib(s.added)}")
    console.print(table)
    info(f"{vol} occupies {mib(allocated(vol))} (base image not counted); "
         f"free under {paths.pool}: {mib(shutil.disk_usage(paths.pool).free)}")
    return snaps


def save_file(paths: LabPaths) -> Path:
    return Path("/var/lib/libvirt/qemu/save") / f"{domain(paths)}.save"


def suspend(paths: LabPaths) -> None:
    di = _require_domain(paths)
    if suspended(di):
        info("  already suspended (./labctl lab.resume)")
        return
    if di.get("state") != "running":
        raise StageFailed(f"the lab VM is {di.get('state')}, not running: nothing to suspend",
                          hint="./labctl lab.up")
    with stage("suspend: save the VM's memory to disk (virsh managedsave)",
              hint=f"virsh -c {hostrun.LIBVIRT_URI} dominfo {domain(paths)}"):
        _virsh("managedsave", domain(paths))
    f = save_file(paths)
    size = f" ({mib(f.stat().st_size)} in {f})" if f.exists() else ""
    info(f"  suspended{size}; ./labctl lab.resume brings it back")


def resume(paths: LabPaths, settings: Settings) -> dict:
    di = _require_domain(paths)
    if not suspended(di):
        if di.get("state") == "running":
            info("  not suspended: the lab is running")
            return {}
        raise StageFailed(f"the lab VM is {di.get('state')} without saved memory: a resume "
                          "needs lab.suspend first", hint="./labctl lab.up boots it")
    with stage("resume: restore the VM's memory (virsh start from the managed save)",
              hint=f"virsh -c {hostrun.LIBVIRT_URI} dominfo {domain(paths)}"):
        _virsh("start", domain(paths))
    return recover(paths, "resume", settings)
