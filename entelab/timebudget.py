"""The test run's time budget (``./labctl test.all --budget MIN``, 80 by default).

CI refuses a run past 90 minutes, and a lab machine's speed under QEMU's software
emulation varies from day to day by a factor of two. So the run has a deadline
(``ENTE_LAB_DEADLINE``, epoch seconds, set by entelab/testrun.py) and the slowest VM
tests carry ``@pytest.mark.budget(REF)``: REF is the seconds they took in a CI run on the
reference machine (docs/benchmarks.md). tests/vm/conftest.py runs them after the others,
cheapest first (``order_key``), and skips one that would end past the deadline
(``decide``): its REF times this machine's guest speed, with the tests marked
``budget(REF, keep=True)`` (the restart test, the run's one halt and boot) and the
teardown still to come. Every other VM test counts DEFAULT_REF: on a machine much slower
than the reference even those stop before the deadline. The skip says so and how to run
the test alone. Without a
deadline (pytest run directly, ``test.vm``, or ``--budget 0``) everything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEED_REF = 2.16      # s: 100 fork+exec of /bin/true from Python in the guest, reference machine
SPEED_PROBE = ("python3 -c 'import subprocess,time; t=time.monotonic(); "
               "[subprocess.run([\"/bin/true\"]) for _ in range(100)]; print(time.monotonic()-t)'")
DEFAULT_REF = 15      # s counted for a VM test without a budget mark (most take 2-10 s there)
TEARDOWN = 180        # s kept for lab.destroy + host.restore after the last test
MARGIN = 1.15         # estimates are REF x speed x MARGIN
KEEP_MARGIN = 1.2     # the kept test's: the restart took 0.79-0.87 x REF x speed since the boot
                      # cuts (564.5 s and 618.6 s at x2.68 in CI, 679.7 s at x3.09 in the
                      # development VM, 2026-11-30); 1.5 was set when it took 730 s at x2.34


@dataclass(frozen=True)
class Budget:
    ref: float            # seconds in the reference CI run
    keep: bool = False    # always run (last), its time reserved


def order_key(index: int, budget: Budget | None) -> tuple:
    """Unbudgeted tests first (in file order), then the budgeted ones cheapest first,
    then the kept ones (the restart test halts and boots the VM: it goes last)."""
    if budget is None:
        return (0, 0.0, index)
    return (2, 0.0, index) if budget.keep else (1, budget.ref, index)


def speed(probe_seconds: float) -> float:
    """This machine's guest speed against the reference (2.0: half as fast)."""
    return max(0.5, probe_seconds / SPEED_REF)


def decide(b: Budget, later: list[Budget | None], speed_: float, now: float,
           deadline: float, name: str) -> str:
    """'' to run the test; else the skip reason."""
    if b.keep or not deadline:
        return ""
    kept = sum(x.ref for x in later if x is not None and x.keep) * speed_ * KEEP_MARGIN
    need = b.ref * speed_ * MARGIN
    left = deadline - now - kept - TEARDOWN
    if need <= left:
        return ""
    return (f"time budget: about {need / 60:.1f} min on this machine (reference {b.ref:.0f} s x speed "
            f"{speed_:.2f}), {max(left, 0) / 60:.1f} min left before the run's deadline once "
            f"{kept / 60:.1f} min for the restart test and {TEARDOWN // 60} min for the teardown are kept; "
            f"run it alone: ./labctl test.vm -k {name}")
