"""The firewall chains libvirt adds for its NAT network, and removing only those
that were not there before the lab started libvirt (``host.restore``).
"""

from __future__ import annotations

import shutil

from .hostrun import run
from .progress import warn

LIBVIRT_CHAINS = {
    "filter": ["LIBVIRT_INP", "LIBVIRT_OUT", "LIBVIRT_FWO", "LIBVIRT_FWI", "LIBVIRT_FWX"],
    "nat": ["LIBVIRT_PRT"],
    "mangle": ["LIBVIRT_PRT"],
}


def chains() -> dict[str, list[str]]:
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


def remove_new_chains(before: dict[str, list[str]]) -> list[str]:
    """Delete libvirt chains that were not there before this run, with the jumps to them."""
    removed = []
    for table, present in chains().items():
        ours = [c for c in present if c not in before.get(table, [])]
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
