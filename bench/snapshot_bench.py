#!/usr/bin/env python3
"""Snapshot, restore, suspend, resume (and optionally a halt + lab.up) timed on
the running lab (issue 11).

    .venv/bin/python bench/snapshot_bench.py          # needs `./labctl lab.up` first
    .venv/bin/python bench/snapshot_bench.py --boot   # also lab.down + lab.up, with
                                                      # the rc.M profile of that boot

"restore" and "resume" are timed to a *healthy* lab: the revert/start plus the
recovery (SSH back, clock set, every rc.d service checked, root republished and the
served certificate verified from the host). Prints a Markdown table and writes
build/bench-snapshot.json. Leaves the lab running; removes its own snapshot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import snapshot, state  # noqa: E402
from entelab.guest import Guest  # noqa: E402
from entelab.settings import load_settings  # noqa: E402

NAME = "bench"


def timed(rows: list, label: str, fn, *args):
    t = time.monotonic()
    out = fn(*args)
    rows.append((label, time.monotonic() - t))
    return out


def boot_profile(paths) -> list[str]:
    """rc.M's own lines of the current boot (one timestamp per service)."""
    with Guest.reach(paths) as g:
        out = g.run("journalctl -b -u rc-slackware.service -o short-precise --no-pager "
                    "| grep -E 'rc.M|acme-refresh|Started|Starting'", check=False).stdout
    return out.splitlines()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", action="store_true", help="also time lab.down + lab.up")
    args = ap.parse_args()
    paths = state.paths(state.ROOT)
    settings = load_settings(paths.root)[0]
    rows: list = []
    if NAME in snapshot.names(paths):
        snapshot.forget(paths, NAME)
    snap = timed(rows, "snapshot (disk + memory)", snapshot.snapshot, paths, NAME)
    timed(rows, "restore to a healthy lab (revert + recover)", snapshot.restore, paths, NAME, settings)
    timed(rows, "suspend (managed save)", snapshot.suspend, paths)
    timed(rows, "resume to a healthy lab (start + recover)", snapshot.resume, paths, settings)
    timed(rows, "forget", snapshot.forget, paths, NAME)
    profile: list[str] = []
    if args.boot:
        from entelab import lab, vm
        timed(rows, "lab.down (halt)", vm.down, paths)
        timed(rows, "lab.up of the halted lab", lab.up, paths, settings)
        profile = boot_profile(paths)
    print("\n| step | seconds |\n|---|---:|")
    for label, secs in rows:
        print(f"| {label} | {secs:.1f} |")
    print(f"\nsnapshot memory state {snapshot.mib(snap.memory)}, "
          f"disk when taken +{snapshot.mib(snap.added or 0)}")
    if profile:
        print("\nrc.M profile of that boot:\n" + "\n".join(profile))
    (paths.build / "bench-snapshot.json").write_text(json.dumps(
        {"rows": rows, "memory": snap.memory, "added": snap.added, "profile": profile}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
