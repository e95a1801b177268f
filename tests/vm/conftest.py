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


from labfix import lab_secrets, paths, settings  # noqa: E402,F401  (shared fixtures)
