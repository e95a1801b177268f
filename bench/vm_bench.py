#!/usr/bin/env python3
"""VM benchmark: box build cold and cached, `vagrant up` from nothing, `lab.up` on a
halted VM. Destroys the lab's VM first (it measures from scratch) and at the end
(unless --keep). Prints a Markdown table and writes build/bench-vm.json.

    .venv/bin/python bench/vm_bench.py [--keep] [--skip-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import accel, box, host, lab, state, vm  # noqa: E402
from entelab.render import render_lab  # noqa: E402
from entelab.settings import load_settings  # noqa: E402


def timed(results: list, name: str, fn) -> None:
    start = time.monotonic()
    fn()
    took = time.monotonic() - start
    results.append((name, took))
    print(f"## {name}: {took:.1f}s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the VM running at the end")
    ap.add_argument("--skip-cold", action="store_true", help="do not force a cold box build")
    args = ap.parse_args()

    paths = state.paths(state.ROOT)
    settings = load_settings(paths.root)[0]
    results: list[tuple[str, float]] = []
    host.prepare(paths)
    render_lab(paths, settings)
    vm.destroy(paths, yes=True)
    if not args.skip_cold:
        timed(results, "box build, cold (mmdebstrap + image + box add)",
              lambda: box.build(paths, force=True, vm_exists=False, prepare=False))
    timed(results, "box build, cached (hash check, nothing to do)",
          lambda: box.build(paths, prepare=False))
    timed(results, "acceleration probe (cached answer)", lambda: accel.probe(paths))
    timed(results, "vagrant up, VM not created (define + first boot + ssh)", lambda: vm.up(paths))
    timed(results, "vagrant halt", lambda: vm.down(paths))
    timed(results, "lab.up on the halted VM", lambda: lab.up(paths, settings))
    if not args.keep:
        timed(results, "vagrant destroy", lambda: vm.destroy(paths, yes=True))

    info = {"host": platform.node(), "cores": os.cpu_count(), "accel": accel.describe(paths),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "results": [{"step": n, "seconds": round(t, 1)} for n, t in results]}
    out = paths.build / "bench-vm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"\n{info['when']}, {info['cores']} cores, acceleration {info['accel']}\n")
    print("| step | seconds |\n|---|---:|")
    for name, took in results:
        print(f"| {name} | {took:.1f} |")
    print(f"\n(written to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
