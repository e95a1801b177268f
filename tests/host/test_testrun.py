"""test.host / test.all (entelab/testrun.py): the pytest command each side runs, and a
failing host side reported as FAILED (not "ok") while the VM side still runs."""

from __future__ import annotations

import pytest

from entelab import host, lab, progress, testrun, vm


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """testrun with pytest, the host set-up and the VM replaced by recorders."""
    calls: list[list[str]] = []
    answers = {"not vm": 0, "vm": 0}

    def fake_interactive(cmd, cwd=None, env=None):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        return answers[cmd[cmd.index("-m", 3) + 1]]

    monkeypatch.setattr(testrun, "interactive", fake_interactive)
    for mod, name in ((host, "prepare"), (host, "install_test_tools"), (host, "restore"),
                      (lab, "up"), (vm, "destroy")):
        monkeypatch.setattr(mod, name, lambda *a, **k: None)
    monkeypatch.setattr(progress.console, "_width", 250)

    class Paths:
        root = tmp_path
    return calls, answers, Paths()


def test_host_side_runs_on_workers_and_vm_side_on_one(recorded):
    calls, _, paths = recorded
    assert testrun.run(paths, None, "all") == 0
    host_cmd, vm_cmd = calls
    assert host_cmd[host_cmd.index("-n") + 1] == str(testrun.HOST_WORKERS) and "not vm" in host_cmd
    assert "-n" not in vm_cmd and vm_cmd[vm_cmd.index("-m", 3) + 1] == "vm"
    assert "--durations=15" in host_cmd and "--durations=15" in vm_cmd


def test_failing_host_tests_say_failed_and_the_vm_tests_still_run(recorded, capsys):
    calls, answers, paths = recorded
    answers["not vm"] = 1
    assert testrun.run(paths, None, "all") == 1
    out = capsys.readouterr().out
    assert "FAILED host tests" in out and "ok host tests" not in out, out
    assert "host tests failed (pytest exit 1)" in out
    assert len(calls) == 2                                  # the VM side ran anyway


def test_k_selecting_nothing_on_one_side_is_not_a_failure(recorded, capsys):
    calls, answers, paths = recorded
    answers["not vm"] = testrun.NO_TESTS_COLLECTED
    assert testrun.run(paths, None, "all", k="upgrade") == 0
    assert "ok host tests" in capsys.readouterr().out
    assert all(c[c.index("-k") + 1] == "upgrade" for c in calls)
