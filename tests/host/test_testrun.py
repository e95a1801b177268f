"""test.host / test.all (entelab/testrun.py): the pytest command each side runs, a failing
host side reported as FAILED (not "ok") while the VM side still runs, and the box built in
the background of the host tests."""

from __future__ import annotations

import threading

import pytest

from entelab import box, host, lab, progress, testrun, vm
from entelab.errors import StageFailed


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """testrun with pytest, the host set-up and the VM replaced by recorders."""
    calls: list[list[str]] = []
    answers: dict = {"not vm": 0, "vm": 0, "box": None}
    box_started = threading.Event()

    def fake_interactive(cmd, cwd=None, env=None):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        side = cmd[cmd.index("-m", 3) + 1]
        if side == "not vm" and answers["box"] is not None:
            # the box build runs beside the host tests: it has started before they end
            assert box_started.wait(5)
            calls.append(["(box started while the host tests ran)"])
        return answers[side]

    def fake_box_build(paths, prepare=True):
        assert prepare is False                   # host.prepare ran already
        box_started.set()
        with progress.stage("box image 0123"):
            progress.info("  built: box.tar")
            if isinstance(answers["box"], Exception):
                raise answers["box"]

    monkeypatch.setattr(testrun, "interactive", fake_interactive)
    monkeypatch.setattr(box, "build", fake_box_build)
    for mod, name in ((host, "prepare"), (host, "install_test_tools"),
                      (lab, "up"), (vm, "destroy")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: calls.append([_n]))
    monkeypatch.setattr(host, "restore", lambda *a, **k: calls.append(["restore"]))
    monkeypatch.setattr(progress.console, "_width", 250)

    class Paths:
        root = tmp_path
        logs = tmp_path / "state" / "logs"
    return calls, answers, Paths()


def pytest_calls(calls):
    return [c for c in calls if "pytest" in " ".join(c)]


def test_host_side_runs_on_workers_and_vm_side_on_one(recorded):
    calls, _, paths = recorded
    assert testrun.run(paths, None, "all") == 0
    host_cmd, vm_cmd = pytest_calls(calls)
    assert host_cmd[host_cmd.index("-n") + 1] == str(testrun.HOST_WORKERS) and "not vm" in host_cmd
    assert "-n" not in vm_cmd and vm_cmd[vm_cmd.index("-m", 3) + 1] == "vm"
    assert "--durations=15" in host_cmd and "--durations=15" in vm_cmd
    # every test's duration is kept, one report per side, for comparing runs
    assert f"--junitxml={paths.logs}/host-tests.xml" in host_cmd
    assert f"--junitxml={paths.logs}/vm-tests.xml" in vm_cmd
    assert paths.logs.is_dir()


def test_failing_host_tests_say_failed_and_the_vm_tests_still_run(recorded, capsys):
    calls, answers, paths = recorded
    answers["not vm"] = 1
    assert testrun.run(paths, None, "all") == 1
    out = capsys.readouterr().out
    assert "FAILED host tests" in out and "ok host tests" not in out, out
    assert "host tests failed (pytest exit 1)" in out
    assert len(pytest_calls(calls)) == 2                    # the VM side ran anyway


def test_the_box_is_built_beside_the_host_tests_and_its_lines_follow_them(recorded, capsys):
    calls, answers, paths = recorded
    answers["box"] = "ok"
    assert testrun.run(paths, None, "all") == 0
    assert ["(box started while the host tests ran)"] in calls
    out = capsys.readouterr().out
    # pytest's output is not cut by the box's lines: they come after the host tests
    assert out.index("ok host tests") < out.index(">> box image 0123") < out.index("ok box image 0123")
    assert out.index("ok box image 0123") < out.index("$ pytest -m vm")
    assert calls.index(["up"]) > calls.index(["(box started while the host tests ran)"])


def test_a_failed_box_build_is_reported_no_vm_tests_run_and_the_host_is_restored(recorded, capsys):
    calls, answers, paths = recorded
    answers["box"] = StageFailed("mmdebstrap failed", hint="read the log")
    assert testrun.run(paths, None, "all") == 1
    out = capsys.readouterr().out
    assert "FAILED box image 0123" in out and "mmdebstrap failed" in out, out
    assert ["up"] not in calls and len(pytest_calls(calls)) == 1    # the VM side did not run
    assert ["restore"] in calls


def test_k_selecting_nothing_on_one_side_is_not_a_failure(recorded, capsys):
    calls, answers, paths = recorded
    answers["not vm"] = testrun.NO_TESTS_COLLECTED
    assert testrun.run(paths, None, "all", k="upgrade") == 0
    assert "ok host tests" in capsys.readouterr().out
    assert all(c[c.index("-k") + 1] == "upgrade" for c in pytest_calls(calls))
