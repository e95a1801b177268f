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
from labfix import lab_secrets, paths, settings  # noqa: E402,F401,I001  (shared fixtures)

# ---------------------------------------------------------------- pristine snapshot (issue 11)
PRISTINE = "pristine"


class Pristine:
    """The lab as it was after the first converge and certificates, saved once per run.

    ``restore()`` goes back to it (disk + memory, clock set, services checked, root
    republished) and drops the session connection so the next command reconnects
    (the restored guest has never seen it)."""

    def __init__(self, lab_paths, conn):
        self.paths = lab_paths
        self.conn = conn
        self.name = PRISTINE

    def restore(self) -> dict:
        from entelab import snapshot
        self.conn.close()
        return snapshot.restore(self.paths, self.name)


@pytest.fixture(scope="session")
def pristine(lab_paths, conn):
    """Take the run's pristine snapshot (replacing one left by an earlier run)."""
    from entelab import snapshot
    if PRISTINE in snapshot.names(lab_paths):
        snapshot.forget(lab_paths, PRISTINE)
    snapshot.snapshot(lab_paths, PRISTINE)
    yield Pristine(lab_paths, conn)
