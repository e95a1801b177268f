"""Rehearse an upgrade against the running lab (issue 16): the naive PostgreSQL major bump
that fails and is rolled back, then the dump/restore upgrade 15 -> 17 with the data kept,
in one change set with a Postfix setting: a change that passes and is kept.

Each test calls lab.upgrade's body in-process (entelab/upgrade_lab.run), then goes back:
the pristine snapshot restored, the settings file put back byte for byte (or removed when
there was none), build/ re-rendered from the run's settings, the pre-upgrade-* snapshots
forgotten (disk). One test: everything is checked on one rolled-back and one upgraded
state (each lab.upgrade runs the whole verify suite, a forced renewal included).
"""

from __future__ import annotations

import json
import shlex
import uuid

import pytest

from entelab import admin, payload, snapshot, stack, upgrade, upgrade_lab, verify
from entelab.render import render_lab, render_tree
from entelab.settings import load_settings, local_settings_path

pytestmark = pytest.mark.vm


@pytest.fixture
def reset(paths, settings, pristine):
    """Saves the settings file; afterwards restores pristine, the file, build/; forgets
    the rehearsal snapshots."""
    path = local_settings_path(paths.root)
    saved = path.read_bytes() if path.exists() else None
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    yield path
    try:
        pristine.restore()
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)
            path.chmod(mode or 0o644)
        render_lab(paths, settings, quiet=True)
        for name in snapshot.names(paths):
            if name.startswith(upgrade.SNAPSHOT_PREFIX):
                snapshot.forget(paths, name)


def latest_report(paths) -> dict:
    return json.loads((paths.build / "upgrade-latest.json").read_text())


def signed_up(guest, settings, n: int) -> list[tuple[str, int]]:
    out = []
    for _ in range(n):
        email = f"up-{uuid.uuid4().hex[:8]}@{settings.domain}"
        out.append((email, verify.sign_in_with_code(guest, settings, email)))
    return out


def pg_image(guest) -> str:
    return guest.run("docker inspect -f '{{.Config.Image}}' ente-postgres").stdout.strip()


@pytest.mark.budget(365)    # reference seconds in CI: tests/vm/conftest.py's time budget
def test_naive_17_rolls_back_then_dump_restore_and_a_postfix_change_are_kept(guest, paths, settings, reset):
    """(b) then (c) on one lab: the naive bump loads the 17 image before its snapshot, so the
    rollback keeps it loaded and the dump/restore upgrade does not import it again. (a), a
    change that passes and is kept, rides in (c)'s change set: a Postfix setting beside the
    PostgreSQL major (one verify suite and one renewal fewer in the CI run)."""
    # ---- (b) the naive bump: fails as production does, rolled back, still on 15
    before = reset.read_bytes() if reset.exists() else None
    users = signed_up(guest, settings, 2)
    with pytest.raises(upgrade.UpgradeFailed) as exc:
        upgrade_lab.run(paths, ["images.postgres=ente-lab/postgres:17"], naive=True)
    guest.close()
    assert "rolled back" in exc.value.message
    data = latest_report(paths)
    assert data["outcome"] == "rolled back" and not data["ok"]
    assert "stack" in data["failed"], data["failed"]
    assert "database files are incompatible with server" in data["reason"], data["reason"]
    assert next(c for c in data["checks"] if c["name"] == "stack")["ok"] is False
    rollback = next(s for s in data["steps"] if s["name"] == "rollback")
    assert rollback["ok"] and "stack healthy" in rollback["detail"], rollback
    # the lab: healthy, still on 15, the user still there; settings and build/ untouched
    assert stack.problems(stack.containers(guest)) == []
    assert pg_image(guest) == "ente-lab/postgres:15"
    assert "PostgreSQL) 15." in guest.run("docker exec ente-postgres postgres --version").stdout
    assert users[0][0] in {u.email for u in admin.psql_users(guest, settings)}
    assert (reset.read_bytes() if reset.exists() else None) == before
    compose = (paths.rendered / settings.paths.compose_dir.lstrip("/") / "docker-compose.yml").read_text()
    assert "ente-lab/postgres:15" in compose and "ente-lab/postgres:17" not in compose
    assert verify.timed("proxy", lambda: verify.check_proxy(guest, paths, settings)).ok
    prepared = next(s for s in data["steps"] if s["name"] == "prepare")
    assert "ente-lab/postgres:17 loaded" in prepared["detail"]

    # ---- (c) the same change by dump/restore: on 17 after, users and codes kept
    pending = f"pending-{uuid.uuid4().hex[:8]}@{settings.domain}"      # a code asked for, never used
    r = verify.post_json(guest, settings, "/users/ott", {"email": pending, "purpose": "signup"})
    assert r["status"] == 200, r
    sql = f"SELECT count(*) FROM otts WHERE email = '{pending}'"
    psql = (f"docker exec ente-postgres psql -X -U {shlex.quote(settings.db.user)} "
            f"-d {shlex.quote(settings.db.name)} -At -c ")
    assert guest.run(psql + shlex.quote(sql)).stdout.strip() == "1"

    report = upgrade_lab.run(paths, ["images.postgres=ente-lab/postgres:17",
                                     "postfix.message_size_limit=20480000"])
    guest.close()
    assert report is not None and report.outcome == "kept", report.to_dict()
    assert report.plan.pg_mode == "dump-restore" and (report.plan.pg_old, report.plan.pg_new) == (15, 17)
    assert "/etc/postfix/main.cf" in report.plan.files
    # (a) the Postfix change: applied, and kept in the settings file (other lines kept),
    # so the next lab.up renders it again
    assert guest.run("postconf -h message_size_limit").stdout.strip() == "20480000"
    text = reset.read_text()
    assert "message_size_limit: 20480000" in text
    assert all(line in text for line in (before or b"").decode().splitlines() if line.strip())
    assert load_settings(paths.root)[0].postfix.message_size_limit == 20480000
    # the dump: on the host, private, named after the snapshot that was kept
    dump = paths.home / "dumps" / f"{report.snapshot}.sql"
    assert dump.is_file() and dump.stat().st_mode & 0o777 == 0o600
    assert "PostgreSQL database cluster dump complete" in dump.read_text()
    assert report.snapshot in snapshot.names(paths)
    prepared = next(s for s in report.steps if s.name == "prepare")
    assert "nothing to do" in guest.run(f"{upgrade_lab.IMAGES_TOOL} load ente-lab/postgres:17").stdout
    assert prepared.seconds < 30, prepared       # already loaded by the naive attempt
    # on 17, with the data of 15
    assert pg_image(guest) == "ente-lab/postgres:17"
    assert "PostgreSQL) 17." in guest.run("docker exec ente-postgres postgres --version").stdout
    have = {(u.email, u.user_id) for u in admin.psql_users(guest, settings)}
    assert set(users) <= have
    assert guest.run(psql + shlex.quote(sql)).stdout.strip() == "1"
    data_check = next(c for c in report.checks if c.name == "data")
    assert data_check.ok and "got a new code and verified it" in data_check.detail
    # the old data directory is kept aside in the guest
    aside = guest.run(f"ls -d {settings.paths.data_dir}/postgres-data.pg15-*").stdout.split()
    assert len(aside) == 1 and guest.run(f"cat {aside[0]}/PG_VERSION").stdout.strip() == "15"
    # a new user can sign up on 17
    new = f"after-{uuid.uuid4().hex[:8]}@{settings.domain}"
    assert verify.sign_in_with_code(guest, settings, new) > 0
    # kept in the settings: rendering them again (what the next lab.up does) keeps 17
    kept = load_settings(paths.root)[0]
    assert kept.images.postgres == "ente-lab/postgres:17"
    assert payload.images_for(kept)["postgres"] == "ente-lab/postgres:17"
    from entelab import secrets as secrets_mod
    secrets = secrets_mod.load_or_create(paths.secrets, dry_run=True)[0]
    compose = next(d for e, d in render_tree(kept, secrets, paths.lab_id) if e.path.endswith("/docker-compose.yml"))
    assert b"ente-lab/postgres:17" in compose
    stack_conf = guest.read("/etc/ente-lab/stack.conf")
    assert "ente-lab/postgres:17" in stack_conf
    # the report lists every check and the step timings
    data = latest_report(paths)
    assert [c["name"] for c in data["checks"]] == [*verify.CHECKS, "data"] and data["ok"]
    assert all(c["ok"] for c in data["checks"])
    assert [s["name"] for s in data["steps"]][:8] == ["prepare", "snapshot", "dump", "apply", "verify",
                                                       "data check", "keep", "report"]
