"""Snapshot names (issue 11): a grammar checked before anything touches libvirt."""

import pytest

from entelab import snapshot
from entelab.errors import EXIT_BAD_INPUT, LabError


@pytest.mark.parametrize("name", ["pristine", "before-upgrade", "step.3", "a", "x_1", "0" * 41])
def test_valid_names(name):
    assert snapshot.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Pristine", "-x", ".x", "a b", "a/b", "x" * 42, "naïve",
                                  "ok\n", "a;rm"])
def test_invalid_names_are_refused_with_a_hint(name):
    with pytest.raises(LabError) as err:
        snapshot.validate_name(name)
    assert err.value.exit_code == EXIT_BAD_INPUT
    assert "invalid snapshot name" in err.value.message and err.value.hint


def test_cap_setting(monkeypatch):
    monkeypatch.delenv("ENTE_LAB_MAX_SNAPSHOTS", raising=False)
    assert snapshot.max_snapshots() == snapshot.MAX_SNAPSHOTS
    monkeypatch.setenv("ENTE_LAB_MAX_SNAPSHOTS", "2")
    assert snapshot.max_snapshots() == 2
    monkeypatch.setenv("ENTE_LAB_MAX_SNAPSHOTS", "many")
    with pytest.raises(LabError):
        snapshot.max_snapshots()
