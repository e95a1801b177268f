"""lab.upgrade without a VM (issue 16): the change set, the plan as data, the settings
write-back, the dump retention, the keep/rollback decision with fake steps, the report."""

from __future__ import annotations

import json
import os
import stat

import conftest
import pytest
import yaml
from rich.console import Console

from entelab import payload, render, upgrade
from entelab.errors import SettingsError
from entelab.settings import load_settings
from entelab.verify import Check


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    from entelab import secrets as secrets_mod
    return secrets_mod.load_or_create(tmp_path_factory.mktemp("s") / ".lab-secrets.yaml", dry_run=True)[0]


def tree(settings, secrets) -> dict[str, bytes]:
    return {e.path: data for e, data in render.render_tree(settings, secrets, "entelab-test")}


def plan_of(secrets, *sets: str, naive: bool = False, base: tuple[str, ...] = ()) -> upgrade.Plan:
    old = conftest.load(base)
    new = conftest.load((*base, *sets))
    return upgrade.compute_plan(old, new, tree(old, secrets), tree(new, secrets), naive=naive)


# ------------------------------------------------------------------ plan as data
def test_no_change_plan(secrets):
    plan = plan_of(secrets, "images.postgres=postgres:15")
    assert plan.no_change and plan.files == [] and plan.recreate == [] and plan.pg_mode == "none"
    assert any("no change" in n for n in plan.notes)


def test_postfix_setting_changes_main_cf_only(secrets):
    plan = plan_of(secrets, "postfix.message_size_limit=20480000")
    assert plan.changes == [("postfix.message_size_limit", 10240000, 20480000)]
    assert plan.files == ["/etc/postfix/main.cf"]
    assert plan.recreate == [] and plan.pg_mode == "none"
    main_cf = tree(conftest.load(["postfix.message_size_limit=20480000"]), secrets)["/etc/postfix/main.cf"]
    assert b"\nmessage_size_limit = 20480000\n" in main_cf


def test_postgres_major_is_dump_restore_and_recreates_postgres_only(secrets):
    plan = plan_of(secrets, "images.postgres=ente-lab/postgres:17")
    assert (plan.pg_old, plan.pg_new, plan.pg_mode) == (15, 17, "dump-restore")
    assert plan.new_pg_image == "ente-lab/postgres:17"
    assert plan.recreate == ["ente-postgres"]
    assert "/usr/local/docker-ente/docker-compose.yml" in plan.files
    assert "/etc/ente-lab/stack.conf" in plan.files          # STACK_IMAGES names the new image
    assert any("dump (pg_dumpall)" in n for n in plan.notes)


def test_upstream_tag_selects_the_lab_major_too(secrets):
    plan = plan_of(secrets, "images.postgres=postgres:17")
    assert plan.pg_mode == "dump-restore" and plan.new_pg_image == "ente-lab/postgres:17"


def test_naive_plan(secrets):
    plan = plan_of(secrets, "images.postgres=ente-lab/postgres:17", naive=True)
    assert plan.pg_mode == "naive" and any("--naive" in n for n in plan.notes)


def test_unknown_major_keeps_15_and_says_so(secrets):
    plan = plan_of(secrets, "images.postgres=postgres:12")
    assert plan.pg_mode == "none" and plan.files == []
    assert any("builds PostgreSQL 15, 17 only" in n for n in plan.notes)


def test_museum_image_change_is_honest_with_the_standin(secrets):
    plan = plan_of(secrets, "images.museum=ghcr.io/ente/server:v9")
    assert plan.files == [] and plan.recreate == [] and plan.pg_mode == "none"
    assert any("rehearses nothing of Museum itself" in n for n in plan.notes)


def test_recreate_follows_bind_mounts_and_env(secrets):
    old = conftest.load()
    t_old = tree(old, secrets)
    t_new = dict(t_old)
    museum = "/usr/local/docker-ente/museum.yaml"
    t_new[museum] = t_old[museum] + b"# changed\n"
    assert upgrade.containers_to_recreate(t_old, t_new, old.paths.compose_dir) == ["ente-museum", "ente-socat"]
    env = "/usr/local/docker-ente/.env"
    t_new = dict(t_old)
    t_new[env] = t_old[env].replace(b"ENTE_DB_NAME=", b"ENTE_DB_NAME=x", 1)
    got = upgrade.containers_to_recreate(t_old, t_new, old.paths.compose_dir)
    assert "ente-postgres" in got and "ente-museum" in got and "ente-minio" not in got


def test_postgres_major_of_image_refs():
    assert payload.postgres_major("postgres:15") == 15
    assert payload.postgres_major("docker.io/library/postgres:17.2-bookworm") == 17
    assert payload.postgres_major("ente-lab/postgres:17") == 17
    assert payload.postgres_major("postgres:latest") is None
    assert payload.postgres_major("ghcr.io/x/postgres:17") is None


# ------------------------------------------------------------------ change set errors
def test_change_set_from_sets_and_file(tmp_path):
    f = tmp_path / "change.yaml"
    f.write_text("images:\n  postgres: ente-lab/postgres:17\npostfix:\n  message_size_limit: 1\n")
    got = upgrade.parse_change_set(["postfix.message_size_limit=20480000"], f)
    assert got == {"images": {"postgres": "ente-lab/postgres:17"}, "postfix": {"message_size_limit": 20480000}}


def test_empty_change_set_refused():
    with pytest.raises(SettingsError, match="no change set"):
        upgrade.parse_change_set([], None)


@pytest.mark.parametrize("sets, words", [
    (["postfix.bogus=1"], ["postfix.bogus", "unknown setting"]),
    (["images.postgres=NOT A TAG"], ["images.postgres"]),
    (["postfix.message_size_limit=12"], ["postfix.message_size_limit", "65536"]),
    (["vm.memory=8192"], ["vm.memory", "lab.upgrade does not change it"]),
    (["db.name=other"], ["db.name", "not an upgrade"]),
    (["novalue"], ["KEY=VALUE"]),
])
def test_change_set_errors_name_the_setting_and_change_nothing(tmp_path, sets, words):
    local = tmp_path / "settings.local.yaml"
    local.write_text("# mine\ndomain: darkstar.lan\n")
    before = local.read_bytes()
    with pytest.raises(SettingsError) as exc:
        upgrade.settings_pair(tmp_path, upgrade.parse_change_set(sets), local_file=local)
    text = " ".join(exc.value.problems)
    for w in words:
        assert w in text, text
    assert exc.value.exit_code == 2
    assert local.read_bytes() == before


def test_bad_file_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        upgrade.parse_change_set([], f)


# ------------------------------------------------------------------ settings write-back
LOCAL = """\
# my lab
domain: darkstar.lan     # the article's
images:
  museum: ghcr.io/ente/server:latest   # upstream
  postgres: postgres:15
admins: [5551234567654321]

vm:
  memory: 4096
"""


def test_write_back_round_trip_keeps_other_keys_comments_and_mode(tmp_path):
    local = tmp_path / "settings.local.yaml"
    local.write_text(LOCAL)
    local.chmod(0o640)
    changes = upgrade.parse_change_set(["images.postgres=ente-lab/postgres:17",
                                        "postfix.message_size_limit=20480000"])
    path, kept = upgrade.write_settings(tmp_path, changes, local_file=local)
    assert path == local and kept
    text = local.read_text()
    assert "# my lab" in text and "# the article's" in text and "# upstream" in text
    assert "  postgres: ente-lab/postgres:17" in text
    data = yaml.safe_load(text)
    assert data["images"] == {"museum": "ghcr.io/ente/server:latest", "postgres": "ente-lab/postgres:17"}
    assert data["postfix"] == {"message_size_limit": 20480000}
    assert data["admins"] == [5551234567654321] and data["vm"] == {"memory": 4096}
    assert stat.S_IMODE(local.stat().st_mode) == 0o640
    s = load_settings(tmp_path, local_file=local)[0]
    assert s.images.postgres == "ente-lab/postgres:17" and s.postfix.message_size_limit == 20480000
    assert not list(tmp_path.glob(".settings-*"))


def test_write_back_into_a_new_file(tmp_path):
    local = tmp_path / "settings.local.yaml"
    upgrade.write_settings(tmp_path, upgrade.parse_change_set(["images.postgres=postgres:17"]), local_file=local)
    assert yaml.safe_load(local.read_text()) == {"images": {"postgres": "postgres:17"}}
    assert stat.S_IMODE(local.stat().st_mode) == 0o644


def test_write_back_of_a_flow_mapping_falls_back_to_a_dump(tmp_path):
    local = tmp_path / "settings.local.yaml"
    local.write_text("images: {postgres: 'postgres:15'}\n")
    _, kept = upgrade.write_settings(tmp_path, upgrade.parse_change_set(["images.postgres=postgres:17"]),
                                     local_file=local)
    assert not kept and yaml.safe_load(local.read_text()) == {"images": {"postgres": "postgres:17"}}


def test_with_changes_quotes_values_that_need_it():
    text, kept = upgrade.with_changes("smtp:\n  sender_name: Ente   # x\n", {"smtp": {"sender_name": "No: 1"}})
    assert kept and yaml.safe_load(text) == {"smtp": {"sender_name": "No: 1"}} and "# x" in text


# ------------------------------------------------------------------ dumps
def test_dump_is_private_and_retention_keeps_the_newest(tmp_path):
    names = [f"pre-upgrade-2026112{i}-000000" for i in range(5)]
    deleted_all = []
    for n in names:
        path, deleted = upgrade.save_dump(tmp_path, n, b"-- dump\n", keep=3)
        deleted_all += [p.name for p in deleted]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    d = upgrade.dump_dir(tmp_path)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(p.name for p in d.iterdir()) == [f"{n}.sql" for n in names[2:]]
    assert deleted_all == [f"{names[0]}.sql", f"{names[1]}.sql"]
    (d / "unrelated.txt").write_text("x")
    upgrade.prune_dumps(d, 1)
    assert sorted(p.name for p in d.iterdir()) == [f"{names[-1]}.sql", "unrelated.txt"]


def test_restore_errors_tolerate_only_a_fresh_clusters_two():
    stderr = ('psql:<stdin>:25: ERROR:  current user cannot be dropped\n'
              'psql:<stdin>:32: ERROR:  role "entedbuser" already exists\n')
    assert upgrade.restore_errors(stderr) == []
    bad = stderr + 'psql:<stdin>:90: ERROR:  relation "users" already exists\n'
    assert upgrade.restore_errors(bad) == ['psql:<stdin>:90: ERROR:  relation "users" already exists']


# ------------------------------------------------------------------ the flow with fake steps
class FakeSteps:
    def __init__(self, fail: str = "", checks_fail: str = ""):
        self.calls: list[str] = []
        self.fail, self.checks_fail = fail, checks_fail
        self.settings_written = False

    def _step(self, name: str, detail: str) -> str:
        self.calls.append(name)
        if self.fail == name:
            raise AssertionError(f"{name} broke")
        return detail

    def prepare(self):
        return self._step("prepare", "nothing to prepare")

    def snapshot(self):
        return self._step("snapshot", "pre-upgrade-x (disk + memory)")

    def dump(self):
        return self._step("dump", "/state/dumps/pre-upgrade-x.sql")

    def apply(self):
        return self._step("apply", "applied")

    def verify(self):
        self.calls.append("verify")
        return [Check(n, n != self.checks_fail, "detail", 1.0) for n in ("services", "stack", "proxy")]

    def data_check(self):
        self.calls.append("data")
        return Check("data", self.fail != "data", "users kept", 2.0)

    def keep(self):
        self.settings_written = True
        return self._step("keep", "kept")

    def rollback(self):
        return self._step("rollback", "restored")


def a_plan(**kw) -> upgrade.Plan:
    return upgrade.Plan(changes=[("postfix.message_size_limit", 10240000, 20480000)], **kw)


def test_success_keeps_and_never_restores():
    steps = FakeSteps()
    r = upgrade.run_flow(a_plan(), steps)
    assert r.outcome == "kept" and r.ok and steps.settings_written
    assert steps.calls == ["prepare", "snapshot", "dump", "apply", "verify", "data", "keep"]
    assert r.snapshot == "pre-upgrade-x" and r.dump.endswith(".sql")
    assert [s.name for s in r.steps] == ["prepare", "snapshot", "dump", "apply", "verify", "data check", "keep"]


def test_a_failing_check_restores_and_leaves_settings_untouched():
    steps = FakeSteps(checks_fail="stack")
    r = upgrade.run_flow(a_plan(), steps)
    assert r.outcome == "rolled back" and not r.ok
    assert r.failed == "check stack" and r.reason == "detail"
    assert steps.calls[-1] == "rollback" and "keep" not in steps.calls and not steps.settings_written
    assert "data" not in steps.calls


def test_every_failed_check_is_named():
    class Two(FakeSteps):
        def verify(self):
            return [Check("stack", False, "FATAL: x", 1.0), Check("proxy", False, "502", 1.0)]
    r = upgrade.run_flow(a_plan(), Two())
    assert r.failed == "check stack, proxy" and r.reason == "stack: FATAL: x; proxy: 502"


@pytest.mark.parametrize("fail", ["dump", "apply", "data", "keep"])
def test_any_failing_step_after_the_snapshot_rolls_back(fail):
    steps = FakeSteps(fail=fail)
    r = upgrade.run_flow(a_plan(), steps)
    assert r.outcome == "rolled back" and r.failed in (fail, f"check {fail}")
    assert steps.calls[-1] == "rollback"


def test_keep_on_failure_does_not_restore():
    steps = FakeSteps(checks_fail="proxy")
    r = upgrade.run_flow(a_plan(), steps, keep_on_failure=True)
    assert r.outcome == "left for inspection" and "rollback" not in steps.calls
    assert not steps.settings_written and any("lab.restore pre-upgrade-x" in n for n in r.notes)


@pytest.mark.parametrize("fail", ["prepare", "snapshot"])
def test_a_failure_before_the_snapshot_needs_no_rollback(fail):
    steps = FakeSteps(fail=fail)
    r = upgrade.run_flow(a_plan(), steps)
    assert r.outcome == "failed" and r.failed == fail and "rollback" not in steps.calls
    assert steps.calls[-1] == fail and "dump" not in steps.calls


def test_a_failed_rollback_is_reported():
    steps = FakeSteps(fail="rollback", checks_fail="stack")
    r = upgrade.run_flow(a_plan(), steps)
    assert r.outcome == "rollback FAILED" and any("rollback failed" in n for n in r.notes)


def test_no_change_plan_runs_nothing():
    steps = FakeSteps()
    r = upgrade.run_flow(upgrade.Plan(changes=[]), steps)
    assert r.outcome == "no change" and r.ok and steps.calls == []


# ------------------------------------------------------------------ report
def test_report_rendering_and_json(tmp_path):
    r = upgrade.run_flow(a_plan(notes=["a note"]), FakeSteps(checks_fail="stack"),
                         started="2026-11-29T10:00:00Z")
    con = Console(record=True, width=200)
    con.print(upgrade.report_tables(r))
    text = con.export_text()
    for want in ("rolled back", "check stack failed", "postfix.message_size_limit", "10240000", "20480000",
                 "services", "FAILED", "snapshot", "rollback", "note: a note"):
        assert want in text, want
    path = upgrade.write_report(tmp_path / "build", r)
    data = json.loads(path.read_text())
    assert path.name == "upgrade-20261129T100000Z.json"
    assert json.loads((tmp_path / "build" / "upgrade-latest.json").read_text()) == data
    assert data["outcome"] == "rolled back" and data["failed"] == "check stack" and not data["ok"]
    assert [c["name"] for c in data["checks"]] == ["services", "stack", "proxy"]
    assert data["plan"]["changes"] == [{"key": "postfix.message_size_limit", "old": 10240000, "new": 20480000}]


def test_plan_table_renders():
    con = Console(record=True, width=200)
    con.print(upgrade.plan_table(upgrade.Plan(changes=[("images.postgres", "postgres:15", "ente-lab/postgres:17")],
                                              pg_old=15, pg_new=17, pg_mode="dump-restore",
                                              recreate=["ente-postgres"])))
    text = con.export_text()
    assert "15 -> 17 by dump/restore" in text and "ente-postgres" in text


def test_env_var_does_not_leak_into_upgrade_settings(monkeypatch, tmp_path):
    """settings_pair reads the same file a task would: $ENTE_LAB_SETTINGS when set."""
    f = tmp_path / "alt.yaml"
    f.write_text("postfix:\n  message_size_limit: 20480000\n")
    monkeypatch.setenv("ENTE_LAB_SETTINGS", str(f))
    old, new = upgrade.settings_pair(tmp_path, {"postfix": {"message_size_limit": 30720000}})
    assert old.postfix.message_size_limit == 20480000 and new.postfix.message_size_limit == 30720000
    assert os.environ["ENTE_LAB_SETTINGS"] == str(f)
