"""VM test fixtures: one Fabric connection to the lab VM for the whole session.

`invoke test.vm` brings the VM up once before pytest runs; run directly
(`pytest -m vm`), the fixture brings it up itself if it is not running.
"""

from __future__ import annotations

import pytest

from entelab import connection, state, vm


@pytest.fixture(scope="session")
def lab_paths() -> state.LabPaths:
    return state.paths(state.ROOT)


@pytest.fixture(scope="session")
def conn(lab_paths):
    if vm.domain_state(lab_paths) != "running":
        from entelab import lab
        from entelab.cli import _settings
        lab.up(lab_paths, _settings([]))
    connection.check(lab_paths)          # refreshes a stale cached address once
    c = connection.connect(lab_paths)
    yield c
    c.close()
from labfix import lab_secrets, paths, settings  # noqa: E402,F401  (shared fixtures)
