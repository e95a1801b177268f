"""Test runs: host tests (no VM), VM tests (one VM per run), or both.

``all`` runs ``host.prepare`` first (the host tests use the real vagrant/ruby).

VM tests get the lab brought up once here (prepare -> render -> box -> up), run
``pytest -m vm`` against it, and then, unless ``keep``, destroy the VM and
restore the host (stop the daemons this lab started). Teardown always runs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from . import box as boxmod
from . import host, lab, vm
from .errors import LabError, StageFailed
from .hostrun import interactive
from .progress import console, info, report, stage
from .settings import Settings
from .state import LabPaths

# pytest's own exit code when -k selected no test
NO_TESTS_COLLECTED = 5


# Host tests run on this many pytest-xdist workers (they wait on real validators and
# daemons as much as they compute: 3 min 15 s on one worker, see docs/benchmarks.md);
# VM tests share the one VM and run on one.
HOST_WORKERS = 2


def _pytest(paths: LabPaths, marker: str, k: str, tests: str, deadline: float = 0) -> int:
    """``deadline``: the VM tests' time budget ends then (epoch seconds; 0: none).
    pytest prints the 15 slowest; every test's duration and outcome (skip reasons too) is
    kept beside the run's other logs, <state dir>/logs/{host,vm}-tests.xml (JUnit XML), for
    comparing runs."""
    junit = paths.logs / f"{'vm' if marker == 'vm' else 'host'}-tests.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", marker, tests, "--durations=15",
           f"--junitxml={junit}"]
    if marker != "vm":
        cmd += ["-n", str(HOST_WORKERS)]
    if k:
        cmd += ["-k", k]
    info(f"$ pytest {' '.join(cmd[3:])}")
    env = None
    if marker == "vm":
        env = dict(os.environ, ENTE_LAB_VM_UP="1")
        env.pop("ENTE_LAB_DEADLINE", None)
        if deadline:
            env["ENTE_LAB_DEADLINE"] = f"{deadline:.0f}"
    return interactive(cmd, cwd=paths.root, env=env)


class Alongside:
    """One lab step run in a thread while the host tests run: the box build (mmdebstrap,
    mkfs, qemu-img, `vagrant box add`: nothing the host tests touch) costs 1.5-5 min,
    which the host tests' minutes then hide. Its stage lines are held back (rich
    captures per thread) and printed once the host tests are done, so pytest's output
    stays whole; its error, if any, is raised then."""

    def __init__(self, what: str, fn: Callable[[], object]) -> None:
        self.what, self.output = what, ""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=what, daemon=True)
        info(f"  {what}: started in the background of the host tests")
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        with console.capture() as cap:
            try:
                fn()
            except BaseException as exc:   # noqa: BLE001 - handed to the main thread in join()
                self.error = exc
        self.output = cap.get()

    def join(self) -> None:
        if self._thread.is_alive():
            info(f"  waiting for {self.what} (started beside the host tests)")
        self._thread.join()
        console.print(f"[bold]{self.what}, built beside the host tests:[/]")
        console.out(self.output, end="", highlight=False)
        if self.error is not None:
            raise self.error


def _vm_run(paths: LabPaths, settings: Settings, k: str, keep: bool,
            before: Callable[[], None] | None = None, deadline: float = 0) -> int:
    rc = 1
    try:
        if before is not None:
            before()                # the box built beside the host tests: its lines, its error
        lab.up(paths, settings)
        with stage("VM tests"):
            rc = _pytest(paths, "vm", k, "tests/vm", deadline=deadline)
            if rc == NO_TESTS_COLLECTED:
                info("  no VM tests selected")
    except LabError as exc:
        report(exc, prefix="VM run failed")
        rc = rc or 1
    finally:
        if keep:
            info("--keep: VM left running (`./labctl lab.destroy --yes` removes it)")
        else:
            for step in (lambda: vm.destroy(paths, yes=True), lambda: host.restore(paths)):
                try:
                    step()
                except LabError as exc:
                    report(exc, prefix="teardown step failed")
                    rc = rc or 1
    return rc


def run(paths: LabPaths, settings: Settings, which: str = "all", k: str = "",
        keep: bool = False, budget_min: int = 0) -> int:
    """``budget_min``: the whole run's time budget; the VM tests get its deadline
    (ENTE_LAB_DEADLINE) and skip the slowest ones that would end past it
    (tests/vm/conftest.py, `pytest.mark.budget`)."""
    if which not in ("host", "vm", "all"):
        raise StageFailed(f"unknown test selection {which!r}: host, vm or all")
    deadline = time.time() + budget_min * 60 if budget_min else 0.0
    if budget_min:
        info(f"  time budget: {budget_min} min, until {time.strftime('%H:%M:%S', time.localtime(deadline))} "
             "(the slowest VM tests that would end later are skipped; --budget 0: no limit)")
    rc_host = rc_vm = 0
    if which == "all":
        # host prerequisites first: the host tests validate with the real vagrant
        host.prepare(paths)
    beside = None
    if which in ("host", "all"):
        host.install_test_tools(paths)
        if which == "all":
            beside = Alongside("box image", lambda: boxmod.build(paths, prepare=False))
        try:
            with stage("host tests"):
                rc_host = _pytest(paths, "not vm", k, "tests")
                if rc_host == NO_TESTS_COLLECTED and k:
                    rc_host = 0         # -k selected nothing on this side
                if rc_host:
                    raise StageFailed(f"host tests failed (pytest exit {rc_host})",
                                      hint="read the pytest summary above; the VM tests still run "
                                           "and the run exits non-zero")
        except StageFailed:
            pass                        # reported by stage(); every failure in one run
    if which in ("vm", "all"):
        rc_vm = _vm_run(paths, settings, k, keep, before=beside.join if beside else None, deadline=deadline)
        if rc_vm == NO_TESTS_COLLECTED and k:
            rc_vm = 0
    return rc_host or rc_vm
