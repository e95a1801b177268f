#!/usr/bin/env python3
"""Workshop step timings against the running lab (issue 17, docs/workshop.md "Timings").

    .venv/bin/python bench/workshop_bench.py [--steps apache_proxy,postfix]   # after ./labctl lab.up [--workshop]

For each step in the article's order (or the ones named) it does what an instructor's
commands do, and times each: ``lab.workshop.start STEP`` (every earlier step done, STEP
onward left to do), ``lab.workshop.check`` (the verdict is expected to be "not done"
for STEP), ``lab.workshop.solve STEP`` and ``check`` again (expected "done"). With a
workshop-base snapshot (``./labctl lab.up --workshop``) each start restores it, as an
instructor's ``start``/``reset`` does; without one, start takes the running lab to the
start of the step. It ends with a converge, so the lab is the lab again. What an
attendee types is not timed here: that depends on the attendee (the Postfix step typed
by tests/vm/test_workshop_vm.py is the one measured typing).
Writes build/bench-workshop.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from entelab import converge, lab, stack, state, workshop, workshop_lab  # noqa: E402
from entelab.settings import load_settings  # noqa: E402


def bench_step(paths, settings, guest, name: str) -> dict:
    row: dict = {"step": name}

    def timed(key: str, fn):
        t0 = time.monotonic()
        out = fn()
        row[key] = round(time.monotonic() - t0, 1)
        return out

    timed("start_s", lambda: workshop_lab.start(paths, settings, name, lambda: guest))
    f, ctx = timed("check_s", lambda: workshop_lab.facts(guest, paths, settings))
    v = workshop.BY_NAME[name].check(f, ctx)
    row["before"] = v.state if v.state != workshop.DONE else "done (expected: not done)"
    timed("solve_s", lambda: workshop_lab.solve(paths, settings, name, guest))
    f, ctx = workshop_lab.facts(guest, paths, settings)
    v = workshop.BY_NAME[name].check(f, ctx)
    row["after"] = v.state + (f": {v.symptom}" if v.symptom else "")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="", help="comma-separated step names (default: all)")
    args = ap.parse_args()
    paths = state.paths(state.ROOT)
    settings = load_settings(paths.root)[0]
    names = [s for s in args.steps.split(",") if s] or [s.name for s in workshop.STEPS]
    guest = lab.guest(paths)
    rows = []
    for name in names:
        rows.append(bench_step(paths, settings, guest, name))
        print(json.dumps(rows[-1]), flush=True)
    t0 = time.monotonic()
    converge.converge(guest, paths)
    stack.start(guest, settings)
    stack.wait_healthy(guest, timeout=420)
    out = {"rows": rows, "final_converge_s": round(time.monotonic() - t0, 1)}
    (paths.build / "bench-workshop.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
