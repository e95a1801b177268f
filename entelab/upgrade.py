"""Rehearse an upgrade (issue 16): ``lab.upgrade`` takes a change set, plans, applies it on
the running lab and keeps it or rolls back.

Flow (each step timed): plan -> prepare (a new PostgreSQL image loaded in the VM: nothing
running changes, so a rollback keeps it) -> snapshot (``pre-upgrade-<UTC stamp>``) -> dump
(``pg_dumpall`` in the postgres container, copied to ``<state dir>/dumps``, mode 0600,
``upgrade.keep_dumps`` newest kept) -> apply (render + converge; a PostgreSQL major
change: stack stopped, the old data directory moved aside in the guest and kept, the new
major initialises an empty one, the dump restored with psql, the rest started) ->
the verify suite (entelab/verify.py) -> the data check (users and one-time codes made
before are still there, and one of those users gets a new code and verifies it) ->
report (a table; JSON under build/) -> keep (the change set merged into the lab's settings
file, comments kept) or roll back (snapshot restored, build/ re-rendered from the old
settings, the root republished) and exit 1 saying why. ``--keep-on-failure`` leaves a
failed state for inspection (no restore, settings untouched).

Snapshots: the new one is kept after a success (the way back from the change just kept);
older ``pre-upgrade-*`` ones are forgotten, so the rehearsal holds one snapshot at most
(the cap of snapshot.py still applies; the oldest ``pre-upgrade-*`` goes first when the
cap is reached). After a rollback the snapshot is kept too (the lab is on it).

Pure parts (tested as data in tests/host/test_upgrade.py): the change set, the plan,
the settings write-back, the dump retention, ``run_flow`` with any ``Steps``, the report.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from . import payload
from .errors import LabError, SettingsError, StageFailed
from .settings import (
    DEFAULTS_FILE,
    Settings,
    _merge,
    _yaml_file,
    load_yaml_text,
    local_settings_path,
    parse_override,
    rewrite_local,
    validate,
)
from .verify import Check

SNAPSHOT_PREFIX = "pre-upgrade-"
DUMP_SUFFIX = ".sql"
GUEST_DUMP_DIR = "/var/lib/ente-lab/upgrade"
# The settings an upgrade may not change: not an upgrade of the running lab.
REFUSED = {
    "vm": "a property of the VM itself (lab.down, then lab.up with it)",
    "db": "renames the database or its owner: the data would not follow (not an upgrade)",
    "stack": "switches where every image comes from (a new lab, not an upgrade: lab.up)",
    "upgrade": "a setting of lab.upgrade itself (edit the settings file)",
}
# psql errors a pg_dumpall --clean restore into a fresh cluster always gives: the
# bootstrap superuser (POSTGRES_USER) exists already and cannot drop itself
TOLERATED_RESTORE = (re.compile(r'ERROR:\s+role "[^"]+" already exists'),
                     re.compile(r"ERROR:\s+current user cannot be dropped"))
STANDIN_ONLY_NOTE = ("with the standin payload {key} changes nothing that runs (the compose file keeps "
                     "{image}): this rehearses nothing of {what} itself; the value is kept in the "
                     "settings for the official payload")
WHAT = {"museum": "Museum", "minio": "MinIO", "mc": "the MinIO client", "auth_web": "the Auth web app",
        "cli": "the Ente CLI", "socat": "socat"}


class UpgradeFailed(StageFailed):
    """The upgrade failed (and was rolled back, or left for inspection): exit 1."""


# ------------------------------------------------------------------ change set
def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def parse_change_set(sets: list[str] | tuple[str, ...] = (), file: Path | None = None) -> dict:
    """``--file`` (a settings YAML mapping) then each ``--set KEY=VALUE`` -> one nested dict.
    Raises SettingsError (exit 2) for a malformed option or file; nothing is changed."""
    changes: dict = {}
    if file is not None:
        data = _yaml_file(Path(file))
        changes = _merge(changes, data)
    for text in sets:
        changes = _merge(changes, parse_override(text))
    if not changes:
        raise SettingsError(["no change set: give --set KEY=VALUE (repeatable) or --file SETTINGS.yaml"],
                            hint="e.g. ./labctl lab.upgrade --set images.postgres=ente-lab/postgres:17 --plan")
    return changes


def refused(changes: dict) -> list[str]:
    return [f"{key}: lab.upgrade does not change it: {REFUSED[key.split('.')[0]]}"
            for key in sorted(flatten(changes)) if key.split(".")[0] in REFUSED]


def settings_pair(root: Path, changes: dict, local_file: Path | None = None) -> tuple[Settings, Settings]:
    """(the lab's settings now, with the change set). Every problem of the change set is
    reported at once (SettingsError naming the setting); nothing is written."""
    defaults = _yaml_file(DEFAULTS_FILE)
    local = local_file if local_file is not None else local_settings_path(root)
    data = defaults
    if local.exists() or local.is_symlink():
        data = _merge(data, _yaml_file(local))
    old, _ = validate(data, defaults)
    problems = refused(changes)
    try:
        new, _ = validate(_merge(data, changes), defaults)
    except SettingsError as exc:
        raise SettingsError([*problems, *exc.problems],
                            hint="nothing was changed; ./labctl lab.settings shows the keys") from None
    if problems:
        raise SettingsError(problems, hint="nothing was changed")
    return old, new


# ------------------------------------------------------------------ plan
@dataclass
class Plan:
    changes: list[tuple[str, Any, Any]]                   # key, old, new (effective values)
    files: list[str] = field(default_factory=list)        # rendered files that change
    recreate: list[str] = field(default_factory=list)     # containers re-created
    pg_old: int | None = None
    pg_new: int | None = None
    pg_mode: str = "none"                                 # none, dump-restore, naive
    new_pg_image: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def no_change(self) -> bool:
        return not self.changes

    @property
    def major_change(self) -> bool:
        return self.pg_mode != "none"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["changes"] = [{"key": k, "old": o, "new": n} for k, o, n in self.changes]
        return d


def _value(s: Settings, key: str) -> Any:
    cur: Any = s.model_dump()
    for part in key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _compose_services(text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return {}
    return dict(doc.get("services") or {}) if isinstance(doc, dict) else {}


def _env_vars(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v
    return out


def containers_to_recreate(old_tree: dict[str, bytes], new_tree: dict[str, bytes],
                           compose_dir: str) -> list[str]:
    """Which compose services ``docker-compose up -d`` (and converge's bind-mount rule)
    re-creates for this change of rendered files."""
    from . import vocab
    compose, env = f"{compose_dir}/docker-compose.yml", f"{compose_dir}/.env"
    old_s = _compose_services(old_tree.get(compose, b"").decode())
    new_s = _compose_services(new_tree.get(compose, b"").decode())
    out = {name for name in set(old_s) | set(new_s) if old_s.get(name) != new_s.get(name)}
    old_e, new_e = _env_vars(old_tree.get(env, b"").decode()), _env_vars(new_tree.get(env, b"").decode())
    changed_vars = {k for k in set(old_e) | set(new_e) if old_e.get(k) != new_e.get(k)}
    for name, svc in new_s.items():
        text = json.dumps(svc)
        if any(f"${{{var}}}" in text for var in changed_vars):
            out.add(name)
    for path in set(old_tree) | set(new_tree):
        if path.startswith(compose_dir + "/") and old_tree.get(path) != new_tree.get(path):
            out.update(vocab.STACK_BIND_MOUNTS.get(Path(path).name, ()))
    # socat lives in Museum's network namespace: re-created with it
    if "ente-museum" in out and "ente-socat" in (new_s or old_s):
        out.add("ente-socat")
    return sorted(out)


def compute_plan(old: Settings, new: Settings, old_tree: dict[str, bytes], new_tree: dict[str, bytes],
                 naive: bool = False) -> Plan:
    """Settings in, plan out (no guest, no files): what changes and how it is applied."""
    keys = sorted(set(flatten(old.model_dump())) | set(flatten(new.model_dump())))
    changes = [(k, _value(old, k), _value(new, k)) for k in keys if _value(old, k) != _value(new, k)]
    plan = Plan(changes=changes)
    if not changes:
        plan.notes.append("no change: the change set gives the values the lab has already")
        return plan
    plan.files = sorted(p for p in set(old_tree) | set(new_tree) if old_tree.get(p) != new_tree.get(p))
    plan.recreate = containers_to_recreate(old_tree, new_tree, new.paths.compose_dir)
    old_img, new_img = payload.images_for(old), payload.images_for(new)
    plan.pg_old = payload.postgres_major(old_img["postgres"])
    plan.pg_new = payload.postgres_major(new_img["postgres"])
    plan.new_pg_image = new_img["postgres"]
    if old_img["postgres"] != new_img["postgres"] and plan.pg_old != plan.pg_new:
        plan.pg_mode = "naive" if naive else "dump-restore"
        if plan.pg_old is None or plan.pg_new is None:
            plan.notes.append(f"PostgreSQL {old_img['postgres']} -> {new_img['postgres']}: a major cannot be "
                              "read from a tag; treated as a major change")
        if naive:
            plan.notes.append(f"--naive: only the tag changes (PostgreSQL {plan.pg_old} -> {plan.pg_new} on "
                              "the old data directory), as an administrator would try it: PostgreSQL "
                              "refuses a data directory of another major, so this is expected to fail "
                              "and be rolled back")
        else:
            plan.notes.append(f"PostgreSQL {plan.pg_old} -> {plan.pg_new}: dump (pg_dumpall), the old data "
                              "directory moved aside in the VM and kept, a new one initialised by "
                              f"{plan.pg_new}, the dump restored with psql")
    elif naive:
        plan.notes.append("--naive changes nothing here: no PostgreSQL major change in the change set")
    if new.stack.payload == "standin":
        for key, _o, n in changes:
            sect, _, name = key.partition(".")
            if sect != "images":
                continue
            if name == "postgres":
                major = payload.postgres_major(n)
                if major not in payload_majors():
                    plan.notes.append(f"images.postgres {n}: the lab builds PostgreSQL "
                                      f"{', '.join(map(str, sorted(payload_majors())))} only; the stack "
                                      f"runs {new_img['postgres']}")
                continue
            plan.notes.append(STANDIN_ONLY_NOTE.format(key=key, image=new_img.get(name, "?"),
                                                       what=WHAT.get(name, name)))
    if any(k.startswith("postfix.") or k.startswith("smtp.") for k, _o, _n in changes):
        plan.notes.append("mail settings: the verify suite's mail check sends a real code through the "
                          "changed path")
    return plan


def payload_majors() -> set[int]:
    """The PostgreSQL majors the lab builds images of (standin payload)."""
    from .images import postgres_images
    return set(postgres_images())


def show(value: Any) -> str:
    return "''" if value == "" else str(value)


def plan_table(plan: Plan) -> Group:
    t = Table(title="lab.upgrade plan")
    t.add_column("setting")
    t.add_column("now")
    t.add_column("after")
    for key, old, new in plan.changes:
        t.add_row(escape(key), escape(show(old)), escape(show(new)))
    parts: list[Any] = [t]
    if plan.no_change:
        parts.append("no change: nothing to do")
    else:
        parts.append("rendered files that change: " + (", ".join(plan.files) or "none"))
        parts.append("containers re-created: " + (", ".join(plan.recreate) or "none"))
        pg = {"none": "no", "dump-restore": f"yes: {plan.pg_old} -> {plan.pg_new} by dump/restore",
              "naive": f"{plan.pg_old} -> {plan.pg_new} WITHOUT dump/restore (--naive)"}[plan.pg_mode]
        parts.append(f"PostgreSQL major change: {pg}")
    parts += [f"note: {n}" for n in plan.notes]
    return Group(*[p if isinstance(p, Table) else escape(p) for p in parts])


# ------------------------------------------------------------------ settings write-back
def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


TOP = re.compile(r"^(?P<key>[A-Za-z_][\w-]*)[ \t]*:(?P<rest>.*)$")


def _set_line(lines: list[str], key: str, value: Any) -> bool:
    """Edit ``lines`` in place: ``a.b`` -> the ``  b: <value>`` line inside the top-level
    ``a:`` block (added when missing), ``a`` -> the top-level line. False when the text
    is shaped in a way this editor does not handle (a flow mapping, a block list)."""
    parts = key.split(".")
    if len(parts) > 2:
        return False
    top = None
    for i, line in enumerate(lines):
        m = TOP.match(line)
        if m and m.group("key") == parts[0]:
            top = i
            break
    val = _scalar(value)
    if len(parts) == 1:
        if top is None:
            lines.append(f"{parts[0]}: {val}")
            return True
        rest = lines[top][len(parts[0]):].split(":", 1)[1]
        if rest.strip() in ("",) or rest.strip().startswith("#"):
            return False                       # a block value below it: not handled
        comment = _comment(rest)
        lines[top] = f"{parts[0]}: {val}" + (f"  {comment}" if comment else "")
        return True
    if top is None:
        lines += [f"{parts[0]}:", f"  {parts[1]}: {val}"]
        return True
    rest = lines[top].split(":", 1)[1]
    if rest.strip() and not rest.strip().startswith("#"):
        return False                           # a flow mapping {..} or a scalar
    end = top + 1
    indent = "  "
    found = None
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line.startswith((" ", "\t")) and not line.lstrip().startswith("#"):
            break
        m = re.match(r"^([ \t]+)([A-Za-z_][\w-]*)[ \t]*:(.*)$", line)
        if m:
            indent = m.group(1)
            if m.group(2) == parts[1]:
                found = end
        end += 1
    if found is not None:
        rest = lines[found].split(":", 1)[1]
        if not rest.strip() or rest.strip().startswith("#"):
            return False                       # a block value below it
        comment = _comment(rest)
        lines[found] = f"{indent}{parts[1]}: {val}" + (f"  {comment}" if comment else "")
        return True
    last = end - 1
    while last > top and not lines[last].strip():
        last -= 1
    lines.insert(last + 1, f"{indent}{parts[1]}: {val}")
    return True


def _comment(rest: str) -> str:
    """The trailing ``# comment`` of a one-line value (quoted '#' is not one)."""
    m = re.match(r"""^\s*(?:"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^#'"]*?)(\s+#.*)?\s*$""", rest)
    return m.group(1).strip() if m and m.group(1) else ""


def with_changes(text: str, changes: dict) -> tuple[str, bool]:
    """The settings file's text with the change set merged in. Edits line by line, so
    every other key and every comment stays; when the text is shaped in a way the editor
    does not handle, or its result does not load as the expected document, a plain YAML
    dump of the merged data (comments lost). Returns (text, comments_kept)."""
    data = load_yaml_text(text) if text.strip() else {}
    data = data if isinstance(data, dict) else {}
    want = _merge(data, changes)
    lines = text.splitlines()
    ok = all(_set_line(lines, key, value) for key, value in flatten(changes).items())
    new = "\n".join(lines) + "\n"
    if ok:
        try:
            ok = load_yaml_text(new) == want
        except yaml.YAMLError:
            ok = False
    if not ok:
        return yaml.safe_dump(want, default_flow_style=False, sort_keys=False), False
    return new, True


def write_settings(root: Path, changes: dict, local_file: Path | None = None) -> tuple[Path, bool]:
    """Merge the change set into the lab's settings file (settings.local.yaml or
    $ENTE_LAB_SETTINGS): validated as a task would load it, written atomically, mode kept
    (0644 for a new file). Returns (path, comments_kept)."""
    return rewrite_local(root, lambda text: with_changes(text, changes), local_file)


# ------------------------------------------------------------------ dumps
def dump_dir(home: Path) -> Path:
    return home / "dumps"


def save_dump(home: Path, name: str, data: bytes, keep: int) -> tuple[Path, list[Path]]:
    """Write a dump (dir 0700, file 0600, atomically) and apply the retention count.
    Returns (the dump, the older dumps deleted)."""
    d = dump_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    path = d / f"{name}{DUMP_SUFFIX}"
    tmp = path.with_suffix(".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path, prune_dumps(d, keep)


def prune_dumps(d: Path, keep: int) -> list[Path]:
    """Keep the ``keep`` newest dumps (by name: the names carry a UTC stamp), delete the rest."""
    dumps = sorted(p for p in d.glob(f"{SNAPSHOT_PREFIX}*{DUMP_SUFFIX}") if p.is_file())
    old = dumps[:-keep] if keep > 0 else dumps
    for p in old:
        p.unlink()
    return old


def restore_errors(stderr: str) -> list[str]:
    """The psql errors of a restore that are not the two every fresh cluster gives."""
    return [line.strip() for line in stderr.splitlines()
            if ("ERROR:" in line or "FATAL:" in line) and not any(r.search(line) for r in TOLERATED_RESTORE)]


# ------------------------------------------------------------------ the flow
@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Report:
    plan: Plan
    started: str
    steps: list[Step] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    outcome: str = ""            # kept, rolled back, left for inspection, no change, failed
    failed: str = ""             # the step or check that failed ("check stack", "apply")
    reason: str = ""
    snapshot: str = ""
    dump: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in ("kept", "no change")

    def to_dict(self) -> dict:
        return {"started": self.started, "outcome": self.outcome, "ok": self.ok, "failed": self.failed,
                "reason": self.reason, "snapshot": self.snapshot, "dump": self.dump,
                "plan": self.plan.to_dict(), "steps": [asdict(s) for s in self.steps],
                "checks": [c.to_dict() for c in self.checks], "notes": self.notes}


class Steps(Protocol):
    """The side effects of an upgrade, in order. Each returns a detail string (or checks)
    and raises on failure (LabError, AssertionError)."""

    def prepare(self) -> str: ...
    def snapshot(self) -> str: ...
    def dump(self) -> str: ...
    def apply(self) -> str: ...
    def verify(self) -> list[Check]: ...
    def data_check(self) -> Check: ...
    def keep(self) -> str: ...
    def rollback(self) -> str: ...


def _timed(report: Report, name: str, fn: Callable[[], str]) -> tuple[bool, str]:
    start = time.monotonic()
    try:
        detail, ok = fn(), True
    except LabError as exc:
        detail, ok = exc.message, False
    except AssertionError as exc:
        detail, ok = str(exc) or "failed", False
    except Exception as exc:  # noqa: BLE001 - any failure of a step means: roll back
        detail, ok = f"{type(exc).__name__}: {exc}", False
    report.steps.append(Step(name, ok, round(time.monotonic() - start, 2), detail))
    return ok, detail


def run_flow(plan: Plan, steps: Steps, keep_on_failure: bool = False,
             started: str = "") -> Report:
    """prepare -> snapshot -> dump -> apply -> verify -> data check -> keep, or roll back on
    any failure. ``prepare`` changes nothing that runs (it loads a new image in the VM, so
    a rollback keeps it and a second attempt does not load it again); a failure before the
    snapshot exists needs no rollback."""
    report = Report(plan=plan, started=started or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if plan.no_change:
        report.outcome = "no change"
        return report

    def fail(what: str, why: str) -> Report:
        report.failed, report.reason = what, why
        if keep_on_failure:
            report.outcome = "left for inspection"
            report.notes.append("--keep-on-failure: the failed state is left running; settings unchanged; "
                                f"./labctl lab.restore {report.snapshot} then ./labctl lab.render goes back")
            return report
        ok, detail = _timed(report, "rollback", steps.rollback)
        report.outcome = "rolled back" if ok else "rollback FAILED"
        if not ok:
            report.notes.append(f"rollback failed: {detail}")
        return report

    for name, fn in (("prepare", steps.prepare), ("snapshot", steps.snapshot)):
        ok, detail = _timed(report, name, fn)
        if not ok:
            report.outcome, report.failed, report.reason = "failed", name, detail
            report.notes.append("nothing running was changed (no snapshot, no rollback needed)")
            return report
    report.snapshot = detail.split()[0] if detail else ""
    for name, fn in (("dump", steps.dump), ("apply", steps.apply)):
        ok, detail = _timed(report, name, fn)
        if name == "dump" and ok:
            report.dump = detail
        if not ok:
            return fail(name, detail)
    start = time.monotonic()
    try:
        report.checks = list(steps.verify())
    except Exception as exc:  # noqa: BLE001
        report.checks = [Check("verify", False, f"{type(exc).__name__}: {exc}", 0.0)]
    report.steps.append(Step("verify", all(c.ok for c in report.checks), round(time.monotonic() - start, 2),
                             f"{sum(c.ok for c in report.checks)}/{len(report.checks)} checks ok"))
    bad = [c for c in report.checks if not c.ok]
    if bad:
        return fail("check " + ", ".join(c.name for c in bad), "; ".join(
            c.detail if len(bad) == 1 else f"{c.name}: {c.detail}" for c in bad))
    start = time.monotonic()
    try:
        data = steps.data_check()
    except Exception as exc:  # noqa: BLE001
        data = Check("data", False, f"{type(exc).__name__}: {exc}", 0.0)
    report.checks.append(data)
    report.steps.append(Step("data check", data.ok, round(time.monotonic() - start, 2), data.detail))
    if not data.ok:
        return fail("check data", data.detail)
    ok, detail = _timed(report, "keep", steps.keep)
    if not ok:
        return fail("keep", detail)
    report.outcome = "kept"
    return report


# ------------------------------------------------------------------ report
def report_tables(report: Report) -> Group:
    colour = "green" if report.ok else "red"
    head = f"lab.upgrade: [bold {colour}]{escape(report.outcome)}[/]"
    if report.failed:
        head += f" - {escape(report.failed)} failed: {escape(report.reason)}"
    changes = Table(title="what changed")
    for col in ("setting", "before", "after"):
        changes.add_column(col)
    for key, old, new in report.plan.changes:
        changes.add_row(escape(key), escape(show(old)), escape(show(new)))
    checks = Table(title="checks")
    for col in ("check", "result", "time", "detail"):
        checks.add_column(col)
    for c in report.checks:
        checks.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", f"{c.seconds:.1f}s",
                       escape(c.detail))
    steps = Table(title="steps")
    for col in ("step", "result", "time", "detail"):
        steps.add_column(col)
    for s in report.steps:
        steps.add_row(s.name, "[green]ok[/]" if s.ok else "[red]FAILED[/]", f"{s.seconds:.1f}s",
                      escape(s.detail[:160]))
    total = sum(s.seconds for s in report.steps)
    notes = [escape(f"note: {n}") for n in [*report.plan.notes, *report.notes]]
    return Group(head, changes, checks, steps, f"total {total:.1f}s", *notes)


def write_report(build: Path, report: Report) -> Path:
    """build/upgrade-<stamp>.json and build/upgrade-latest.json."""
    build.mkdir(parents=True, exist_ok=True)
    stamp = report.started.replace(":", "").replace("-", "")
    text = json.dumps(report.to_dict(), indent=2, default=str) + "\n"
    path = build / f"upgrade-{stamp}.json"
    path.write_text(text)
    (build / "upgrade-latest.json").write_text(text)
    return path


def quoted(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


def stamp_now() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())

