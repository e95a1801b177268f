"""Test runs: host tests (no VM), VM tests (one VM per run), or both.

``all`` runs ``host.prepare`` first (the host tests use the real vagrant/ruby).

VM tests get the lab brought up once here (prepare -> render -> box -> up), run
``pytest -m vm`` against it, and then, unless ``keep``, destroy the VM and
restore the host (stop the daemons this lab started). Teardown always runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .progress import StageFailed, console, info, stage
from .state import LabPaths


def _pytest(paths: LabPaths, marker: str, k: str, tests: str) -> int:
    cmd = [sys.executable, "-m", "pytest", "-m", marker, tests]
    if k:
        cmd += ["-k", k]
    info(f"$ pytest {' '.join(cmd[3:])}")
    env = dict(os.environ, ENTE_LAB_VM_UP="1") if marker == "vm" else None
    return subprocess.call(cmd, cwd=paths.root, env=env)


def _vm_run(paths: LabPaths, k: str, keep: bool) -> int:
    from . import host, lab, vm
    from .cli import _settings

    rc = 1
    try:
        lab.up(paths, _settings([]))
        with stage("VM tests"):
            rc = _pytest(paths, "vm", k, "tests/vm")
            if rc == 5:
                info("  no VM tests selected")
    except StageFailed as exc:
        console.print(f"[bold red]VM run failed:[/] {exc}")
        rc = rc or 1
    except Exception as exc:  # noqa: BLE001 - teardown below must still run
        console.print(f"[bold red]VM run failed:[/] {exc!r}")
        rc = 1
    finally:
        if keep:
            info("--keep: VM left running (`invoke lab.destroy --yes` removes it)")
        else:
            for step in (lambda: vm.destroy(paths, yes=True), lambda: host.restore(paths)):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - report, go on with the next step
                    console.print(f"[bold red]teardown step failed:[/] {exc}")
                    rc = rc or 1
    return rc


def run(paths: LabPaths, which: str = "all", k: str = "", keep: bool = False) -> int:
    if which not in ("host", "vm", "all"):
        raise StageFailed(f"unknown test selection {which!r}: host, vm or all")
    rc_host = rc_vm = 0
    if which == "all":
        # host prerequisites first: the host tests validate with the real vagrant
        from . import host
        host.prepare(paths)
    if which in ("host", "all"):
        from . import host
        host.install_test_tools(paths)
        with stage("host tests"):
            rc_host = _pytest(paths, "not vm", k, "tests")
            if rc_host == 5 and k:
                rc_host = 0         # -k selected nothing on this side
    if which in ("vm", "all"):
        rc_vm = _vm_run(paths, k, keep)
        if rc_vm == 5 and k:
            rc_vm = 0
    return rc_host or rc_vm
