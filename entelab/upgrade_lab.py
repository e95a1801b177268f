"""``lab.upgrade`` against the running lab: the real ``Steps`` of entelab/upgrade.py.

Guest side of each step (all through the one guest runner):
- dump: ``docker exec ente-postgres pg_dumpall --clean --if-exists`` into
  /var/lib/ente-lab/upgrade/<name>.sql (0600, kept in the VM for the restore), copied
  to ``<state dir>/dumps/<name>.sql`` (0600; ``upgrade.keep_dumps`` newest kept);
- apply, no PostgreSQL major change: render + converge (converge re-creates the
  containers whose compose definition or bind-mounted file changed: rc.ente reload);
- prepare (before the snapshot): the new PostgreSQL image loaded (``ente-lab-images
  load``; lazy in the box);
- apply, major change by dump/restore: the stack stopped, ``<data_dir>/postgres-data``
  moved to ``postgres-data.pg<old>-<stamp>`` (kept), converge (the stack is stopped:
  files only), ``docker-compose up -d --no-deps ente-postgres`` (initdb on the empty
  directory), the dump restored with psql (the two errors every fresh cluster gives
  tolerated, any other one fails the step), then ``rc.ente start``;
- apply, ``--naive``: the stack stopped, converge, ``rc.ente start``
  bounded in time (docker-compose waits for a PostgreSQL that never gets healthy): its
  failure is recorded and the verify suite says what is wrong;
- rollback: snapshot restored (snapshot.restore: clock, services, the root republished
  from the restored guest, TLS verified from the host), build/ re-rendered from the old
  settings, the stack's health looked at.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

from . import admin, converge, snapshot, stack, verify
from . import upgrade as up
from .errors import GuestCommandError, LabError, StageFailed
from .guest import Guest
from .progress import console, info
from .render import render_lab, render_tree
from .settings import Settings
from .state import LabPaths
from .verify import Check

IMAGES_TOOL = "/usr/local/sbin/ente-lab-images"
OTTS_SQL = "SELECT email_hash, app, ott FROM otts ORDER BY 1, 2, 3"
REGISTERED_SQL = "SELECT user_id FROM key_attributes"
NAIVE_START_SECONDS = 90
PG_READY_SECONDS = 180


def plan_for(paths: LabPaths, old: Settings, new: Settings, naive: bool) -> up.Plan:
    """Both trees rendered in memory with the same secrets (nothing written)."""
    from . import secrets as secrets_mod
    secrets, _ = secrets_mod.load_or_create(paths.secrets, dry_run=True)

    def tree(s: Settings) -> dict[str, bytes]:
        return {e.path: data for e, data in render_tree(s, secrets, paths.lab_id)}

    return up.compute_plan(old, new, tree(old), tree(new), naive=naive)


class LabSteps:
    """The side effects of one upgrade of the running lab."""

    def __init__(self, paths: LabPaths, guest: Guest, old: Settings, new: Settings, plan: up.Plan,
                 changes: dict, stamp: str):
        self.paths, self.guest, self.old, self.new, self.plan = paths, guest, old, new, plan
        self.changes = changes
        self.name = f"{up.SNAPSHOT_PREFIX}{stamp}"
        self.stamp = stamp
        self.users_before: list[admin.User] = []
        self.otts_before: list[str] = []
        self.guest_dump = f"{up.GUEST_DUMP_DIR}/{self.name}{up.DUMP_SUFFIX}"

    # ---------------------------------------------------------- helpers
    def sh(self, cmd: str, timeout: float | None = None, hint: str = "") -> str:
        return self.guest.run(cmd, timeout=timeout, hint=hint).stdout

    def compose(self, *args: str, timeout: float | None = None) -> str:
        return self.sh(stack.compose_command(self.new, *args), timeout=timeout,
                       hint="./labctl lab.logs postgres")

    def psql(self, settings: Settings, sql: str) -> list[str]:
        res = self.guest.run(f"docker exec ente-postgres psql -X -U {shlex.quote(settings.db.user)} "
                             f"-d {shlex.quote(settings.db.name)} -At -F '|' -c {shlex.quote(sql)}")
        return [line for line in res.stdout.splitlines() if line.strip()]

    # ---------------------------------------------------------- steps
    def prepare(self) -> str:
        """The new PostgreSQL image into Docker (lazy: imported only now), before the
        snapshot: nothing running changes, and a rollback keeps it loaded."""
        if not self.plan.major_change or self.new.stack.payload != "standin":
            return "nothing to prepare"
        start = time.monotonic()
        self.sh(f"{IMAGES_TOOL} load {shlex.quote(self.plan.new_pg_image)}", timeout=900,
                hint=f"./labctl lab.ssh --command 'sudo {IMAGES_TOOL} status'")
        return f"{self.plan.new_pg_image} loaded in {time.monotonic() - start:.1f}s"

    def snapshot(self) -> str:
        existing = snapshot.names(self.paths)
        ours = sorted(n for n in existing if n.startswith(up.SNAPSHOT_PREFIX))
        cap = snapshot.max_snapshots()
        while len(existing) >= cap and ours:
            old = ours.pop(0)
            info(f"  the snapshot cap ({cap}) is reached: forgetting the oldest rehearsal snapshot {old}")
            snapshot.forget(self.paths, old)
            existing.remove(old)
        snapshot.snapshot(self.paths, self.name)
        return f"{self.name} (disk + memory)"

    def dump(self) -> str:
        self.users_before = admin.psql_users(self.guest, self.old)
        self.otts_before = self.psql(self.old, OTTS_SQL)
        user = shlex.quote(self.old.db.user)
        self.sh(f"umask 077 && mkdir -p {up.GUEST_DUMP_DIR} && docker exec ente-postgres pg_dumpall "
                f"-U {user} --clean --if-exists > {self.guest_dump}.partial && "
                f"mv {self.guest_dump}.partial {self.guest_dump}",
                hint="./labctl lab.logs postgres")
        tail = self.sh(f"tail -c 200 {self.guest_dump}")
        assert "dump complete" in tail, f"pg_dumpall's output ends early: {tail[-80:]!r}"
        remote = f"/tmp/ente-lab-{self.name}.sql"
        user_ssh = shlex.quote(str(self.guest.conn.user))
        self.sh(f"install -m 0600 -o {user_ssh} {self.guest_dump} {remote}")
        try:
            with tempfile.TemporaryDirectory(prefix="ente-lab-dump-") as tmp:
                local = Path(tmp) / "dump.sql"
                self.guest.get(remote, str(local))
                data = local.read_bytes()
        finally:
            self.guest.run(f"rm -f {remote}", check=False)
        path, deleted = up.save_dump(self.paths.home, self.name, data, self.old.upgrade.keep_dumps)
        if deleted:
            info(f"  retention ({self.old.upgrade.keep_dumps}): deleted {', '.join(p.name for p in deleted)}")
        return f"{path} ({len(data) / 1024:.0f} KiB; {len(self.users_before)} users, " \
               f"{len(self.otts_before)} one-time codes)"

    def apply(self) -> str:
        render_lab(self.paths, self.new, quiet=True)
        if not self.plan.major_change:
            res = converge.converge_with(self.guest, self.paths)
            converge.show(res)
            if not res.ok:
                raise StageFailed("converge refused a file or a reload failed (see above)")
            return f"{len(res.ops)} files changed, reloaded {', '.join(res.report.get('reloaded', [])) or 'nothing'}"
        self.sh("/etc/rc.d/rc.ente stop", timeout=180)
        if self.plan.pg_mode == "naive":
            res = converge.converge_with(self.guest, self.paths)
            if not res.ok:
                raise StageFailed(f"converge refused a file: {res.report.get('refused')}")
            # as an administrator would: docker-compose up -d (rc.ente start), bounded: compose
            # waits for a PostgreSQL that never gets healthy; the verify suite says why
            try:
                res_start = self.guest.run("/etc/rc.d/rc.ente start", check=False, timeout=NAIVE_START_SECONDS)
                started = f"exited {res_start.exited}"
            except GuestCommandError:
                started = f"did not return in {NAIVE_START_SECONDS}s"
            return f"tag changed only (no dump/restore); rc.ente start (docker-compose up -d) {started}"
        return self.dump_restore()

    def dump_restore(self) -> str:
        data = f"{self.new.paths.data_dir}/postgres-data"
        aside = f"{data}.pg{self.plan.pg_old}-{self.stamp}"
        self.sh(f"mv {shlex.quote(data)} {shlex.quote(aside)} && mkdir -m 0700 {shlex.quote(data)}")
        res = converge.converge_with(self.guest, self.paths)
        if not res.ok:
            raise StageFailed(f"converge refused a file: {res.report.get('refused')}")
        self.compose("up", "-d", "--no-deps", "ente-postgres", timeout=300)
        user, db = shlex.quote(self.new.db.user), shlex.quote(self.new.db.name)
        deadline = time.monotonic() + PG_READY_SECONDS
        while True:
            logs = self.guest.run("docker logs ente-postgres 2>&1 | tail -50", check=False).stdout
            ready = self.guest.run(f"docker exec ente-postgres pg_isready -q -U {user} -d {db}", check=False)
            if "init process complete" in logs and ready.ok:
                break
            if time.monotonic() > deadline:
                raise StageFailed(f"the new PostgreSQL did not become ready in {PG_READY_SECONDS}s: "
                                  f"{logs[-300:]}")
            time.sleep(3)
        res2 = self.guest.run(f"docker exec -i ente-postgres psql -X -q -U {user} -d postgres "
                              f"< {self.guest_dump}", check=False, timeout=600)
        errors = up.restore_errors(res2.stderr + res2.stdout)
        if errors:
            raise StageFailed("the restore failed: " + " | ".join(errors[:3]))
        self.sh("/etc/rc.d/rc.ente start", timeout=600)
        version = self.guest.run("docker exec ente-postgres postgres --version", check=False).stdout.strip()
        return f"{version}; old data directory kept at {aside}; dump restored"

    def verify(self) -> list[Check]:
        checks = verify.run_suite(self.guest, self.paths, self.new, stack_timeout=240, fail_fast=True)
        if len(checks) < len(verify.CHECKS):
            ran = {c.name for c in checks}
            info("  not run after the failure: " + ", ".join(n for n in verify.CHECKS if n not in ran))
        return checks

    def data_check(self) -> Check:
        return verify.timed("data", self._data)

    def _data(self) -> str:
        after = {(u.user_id, u.email) for u in admin.psql_users(self.guest, self.new)}
        lost = [u for u in self.users_before if (u.user_id, u.email) not in after]
        assert not lost, f"users missing after the upgrade: {', '.join(u.email for u in lost[:5])}"
        otts = set(self.psql(self.new, OTTS_SQL))
        gone = [o for o in self.otts_before if o not in otts]
        # the verify suite's mail check made and consumed only codes of its own address
        assert not gone, f"{len(gone)} one-time code rows missing after the upgrade"
        if not self.users_before:
            return "no users before the upgrade: nothing to compare (the mail check signed one up)"
        registered = {int(x) for x in self.psql(self.new, REGISTERED_SQL) if x.isdigit()}
        who = next((u for u in self.users_before if u.user_id not in registered), None)
        if who is None:
            return (f"{len(self.users_before)} users and {len(self.otts_before)} code rows kept "
                    "(every user has key attributes: the code check needs SRP, not in the stand-in)")
        uid = verify.sign_in_with_code(self.guest, self.new, who.email)
        assert uid == who.user_id, f"{who.email} verified as user {uid}, was {who.user_id}"
        return (f"{len(self.users_before)} users and {len(self.otts_before)} code rows kept; "
                f"{who.email} got a new code and verified it (user {uid})")

    def keep(self) -> str:
        path, comments = up.write_settings(self.paths.root, self.changes)
        for name in snapshot.names(self.paths):
            if name.startswith(up.SNAPSHOT_PREFIX) and name != self.name:
                snapshot.forget(self.paths, name)
        return (f"{path}: change set merged" + ("" if comments else " (rewritten: comments not kept)")
                + f"; snapshot {self.name} kept (./labctl lab.restore {self.name} goes back)")

    def rollback(self) -> str:
        start = time.monotonic()
        secrets = self.guest.secrets
        self.guest.close()
        result = snapshot.restore(self.paths, self.name, self.old, keep=True)   # republishes the root
        self.guest = result["guest"]
        self.guest.secrets = secrets
        render_lab(self.paths, self.old, quiet=True)
        took = time.monotonic() - start
        left = stack.problems(stack.containers(self.guest))
        health = "stack healthy" if not left else "stack: " + "; ".join(left)
        return f"{self.name} restored, build/ re-rendered from the old settings, root republished " \
               f"in {took:.1f}s; {health}"


def run(paths: LabPaths, sets: list[str], file: str = "", plan_only: bool = False, naive: bool = False,
        keep_on_failure: bool = False) -> up.Report | None:
    """``lab.upgrade``: the change set checked first (exit 2, nothing changed), the plan
    printed; then the flow, the report printed and written; exit 1 when it failed."""
    changes = up.parse_change_set(sets, Path(file) if file else None)
    old, new = up.settings_pair(paths.root, changes)
    plan = plan_for(paths, old, new, naive)
    console.print(up.plan_table(plan))
    if plan_only or plan.no_change:
        return None
    from . import lab
    try:
        guest = lab.guest(paths)
    except LabError as exc:
        raise StageFailed(f"the lab is not reachable: {exc.message}", hint="./labctl lab.up") from None
    stamp = up.stamp_now()
    steps = LabSteps(paths, guest, old, new, plan, changes, stamp)
    report = up.run_flow(plan, steps, keep_on_failure=keep_on_failure)
    steps.guest.close()
    start = time.monotonic()
    console.print(up.report_tables(report))
    out = up.write_report(paths.build, report)
    report.steps.append(up.Step("report", True, round(time.monotonic() - start, 2), str(out)))
    up.write_report(paths.build, report)
    console.print(f"report: {out}")
    if not report.ok:
        raise up.UpgradeFailed(
            f"upgrade {report.outcome}: {report.failed} failed: {report.reason}",
            hint=(f"./labctl lab.restore {report.snapshot}" if report.outcome == "left for inspection"
                  else f"the report: {out}"))
    return report
