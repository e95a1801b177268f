"""The test run's time budget (entelab/timebudget.py): the order of the VM tests and the
skip decision. Facts in (reference seconds, speed, clock, deadline), decision out."""

from __future__ import annotations

import pytest

from entelab import task_bodies, timebudget
from entelab.errors import BadInput
from entelab.timebudget import Budget

RESTART = Budget(266, keep=True)


def test_budgeted_tests_go_last_cheapest_first_and_the_kept_one_at_the_very_end():
    tests = [("dns", None), ("restart", RESTART), ("upgrade", Budget(365)), ("mail", None),
             ("wellknown", Budget(67)), ("payload", Budget(212))]
    ordered = [n for i, (n, b) in sorted(enumerate(tests), key=lambda p: timebudget.order_key(p[0], p[1][1]))]
    assert ordered == ["dns", "mail", "wellknown", "payload", "upgrade", "restart"]


def test_a_test_that_fits_runs():
    # 60 min left; needs 365 x 1.0 x 1.15 = 420 s; keeps 266 x 1.2 = 319 s + 180 s
    assert timebudget.decide(Budget(365), [RESTART], 1.0, now=0, deadline=3600, name="t") == ""


def test_a_test_that_would_end_past_the_deadline_is_skipped_with_the_reason():
    # slow machine (x2): needs 365 x 2 x 1.15 = 839.5 s; 1600 - 638.4 (restart) - 180 = 781.6 s left
    why = timebudget.decide(Budget(365), [None, RESTART], 2.0, now=0, deadline=1600,
                            name="test_naive_17")
    assert why.startswith("time budget: about 14.0 min on this machine (reference 365 s x speed 2.00)")
    assert "13.0 min left" in why and "10.6 min for the restart test" in why
    assert why.endswith("run it alone: ./labctl test.vm -k test_naive_17")
    # the same test, the same clock, on the reference machine: it fits
    assert timebudget.decide(Budget(365), [None, RESTART], 1.0, now=0, deadline=1600, name="t") == ""


def test_the_kept_test_and_a_run_without_deadline_always_run():
    assert timebudget.decide(RESTART, [], 5.0, now=10_000, deadline=1, name="t") == ""
    assert timebudget.decide(Budget(999), [RESTART], 5.0, now=10_000, deadline=0, name="t") == ""


def test_speed_is_measured_against_the_reference_probe():
    assert timebudget.speed(timebudget.SPEED_REF * 2) == pytest.approx(2.0)
    assert timebudget.speed(0.01) == 0.5                       # a floor: never trust a tiny probe


@pytest.mark.parametrize("bad", ["-5", "eighty", "1.5", "99999"])
def test_a_bad_budget_is_refused_before_anything_runs(bad, monkeypatch):
    from entelab import testrun
    monkeypatch.setattr(testrun, "run", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(BadInput) as exc:
        task_bodies.tests(which="all", budget=bad)
    assert "--budget" in exc.value.message and "0 (no limit)" in exc.value.message


def test_the_budget_becomes_the_vm_tests_deadline(monkeypatch, tmp_path):
    """In the VM pytest's environment only (not this process's): a deadline left in the
    caller's environment by anything else is not passed on either."""
    import os
    import time

    from entelab import state, testrun
    seen: list[dict] = []
    monkeypatch.setattr(testrun.lab, "up", lambda *a, **k: None)
    monkeypatch.setattr(testrun, "interactive", lambda cmd, cwd, env: seen.append(env) or 0)
    monkeypatch.setenv("ENTE_LAB_DEADLINE", "12345")
    t0 = time.time()
    testrun.run(state.paths(tmp_path), None, which="vm", budget_min=80, keep=True)
    assert abs(float(seen[-1]["ENTE_LAB_DEADLINE"]) - (t0 + 80 * 60)) < 5
    assert seen[-1]["ENTE_LAB_VM_UP"] == "1"
    assert os.environ["ENTE_LAB_DEADLINE"] == "12345"            # this process's is untouched
    testrun.run(state.paths(tmp_path), None, which="vm", budget_min=0, keep=True)
    assert "ENTE_LAB_DEADLINE" not in seen[-1]
