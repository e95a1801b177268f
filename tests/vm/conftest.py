"""VM test fixtures: one guest runner (entelab.guest.Guest) for the whole session.

`./labctl test.vm` brings the VM up once before pytest runs; run directly
(`pytest -m vm`), the fixture brings it up itself if it is not running.
"""

from __future__ import annotations

import pytest

from entelab import lab, state, vm
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


from labfix import lab_secrets, paths, settings  # noqa: E402,F401  (shared fixtures)
