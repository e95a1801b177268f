"""VM test fixtures: one guest runner (entelab.guest.Guest) for the whole session.

`./labctl test.vm` brings the VM up once before pytest runs; run directly
(`pytest -m vm`), the fixture brings it up itself if it is not running.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest

from entelab import lab, state, timebudget, vm
from entelab.settings import load_settings


@pytest.fixture(scope="session")
def lab_paths() -> state.LabPaths:
    return state.paths(state.ROOT)


@pytest.fixture(scope="session")
def guest(lab_paths):
    if vm.domain_state(lab_paths) != "running":
        lab.up(lab_paths, load_settings(lab_paths.root)[0])
    g = lab.guest(lab_paths)          # refreshes a stale cached address once
    yield g
    g.close()



# ---------------------------------------------------------------- pristine snapshot (issue 11)
PRISTINE = "pristine"


class Pristine:
    """The lab as it was after the first converge and certificates, saved once per run.

    ``restore()`` goes back to it (disk + memory, clock set, services checked, root
    republished) and drops the session connection so the next command reconnects
    (the restored guest has never seen it)."""

    def __init__(self, lab_paths, guest, lab_settings):
        self.paths = lab_paths
        self.guest = guest
        self.settings = lab_settings
        self.name = PRISTINE

    def restore(self) -> dict:
        from entelab import snapshot
        self.guest.close()
        return snapshot.restore(self.paths, self.name, self.settings)


@pytest.fixture(scope="session", autouse=True)
def pristine(lab_paths, guest, settings):  # noqa: F811 - the settings fixture (labfix)
    """Take the run's pristine snapshot (replacing one left by an earlier run), before any
    VM test runs (autouse), so every test that breaks something can go back to it."""
    from entelab import snapshot
    if PRISTINE in snapshot.names(lab_paths):
        snapshot.forget(lab_paths, PRISTINE)
    snapshot.snapshot(lab_paths, PRISTINE)
    yield Pristine(lab_paths, guest, settings)


# ---------------------------------------------------------------- the run's time budget
# entelab/timebudget.py: the slowest tests (`@pytest.mark.budget(REF)`) run last, cheapest
# first, and are skipped when they would end past test.all's deadline.
BUDGET_LOG: dict = {"skipped": []}


def budget_of(item) -> timebudget.Budget | None:
    m = item.get_closest_marker("budget")
    return timebudget.Budget(float(m.args[0]), bool(m.kwargs.get("keep"))) if m else None


def pytest_collection_modifyitems(session, config, items):
    items[:] = [item for _, item in sorted(enumerate(items),
                                           key=lambda p: timebudget.order_key(p[0], budget_of(p[1])))]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of the test is set up (a module's converge included): skip it
    when it would end past the deadline. Unmarked tests count timebudget.DEFAULT_REF."""
    b = budget_of(item) or timebudget.Budget(timebudget.DEFAULT_REF)
    deadline = float(os.environ.get("ENTE_LAB_DEADLINE") or 0)
    if b.keep or not deadline:
        return
    if "speed" not in BUDGET_LOG:
        BUDGET_LOG["speed"] = round(probe_speed(), 2)
    items = item.session.items
    later = [budget_of(i) for i in items[items.index(item) + 1:]]
    why = timebudget.decide(b, later, BUDGET_LOG["speed"], time.time(), deadline, item.originalname)
    if why:
        BUDGET_LOG["skipped"].append({"test": item.nodeid, "why": why})
        pytest.skip(why)


def probe_speed() -> float:
    """The guest's speed against the reference (timebudget.SPEED_PROBE), measured once."""
    try:
        with lab.guest(state.paths(state.ROOT)) as g:
            return timebudget.speed(float(g.run(timebudget.SPEED_PROBE, sudo=False).stdout.strip()))
    except Exception as exc:  # noqa: BLE001 - no probe: the reference speed, said in the summary
        BUDGET_LOG["probe_error"] = str(exc)
        return 1.0


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "speed" not in BUDGET_LOG:
        return
    skipped = BUDGET_LOG["skipped"]
    terminalreporter.write_line(
        f"time budget: guest speed x{BUDGET_LOG['speed']} of the reference machine"
        + (f" (no probe: {BUDGET_LOG['probe_error']})" if "probe_error" in BUDGET_LOG else "")
        + f"; {len(skipped)} test(s) skipped to end before the deadline"
        + "".join(f"\n  {s['test']}" for s in skipped))
    with contextlib.suppress(OSError):
        logs = state.paths(state.ROOT).logs
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "time-budget.json").write_text(json.dumps(BUDGET_LOG, indent=1) + "\n")


from labfix import lab_secrets, paths, settings  # noqa: E402,F401  (shared fixtures)
