"""The article's "Administering the server", as tasks (issue 14).

- ``ott``: a user's newest one-time code, from the catch-all mailbox (subject
  ``Verification code: <code>``) or, with Museum's mail off, from Museum's log as the
  article greps it (``docker-compose logs ente-museum | grep SendEmailOTT``; the lab's
  grep also takes upstream's ``Skipping sending email to <addr>: <subject>`` and the
  hard-coded OTT lines), ANSI colour codes stripped.
- ``users``: the accounts. Stand-in payload: ``psql`` in the ente-postgres container on
  the ``users`` table (the stand-in's equivalent of ``ente admin list-users``, which
  needs Museum's admin API); official images: the CLI itself in the ente-cli container.
- ``promote``: the user id of an address into ``admins`` in the user's settings file,
  re-render + converge (museum.yaml ``internal.admins``), then restart Museum as the
  article does, and socat after it (it lives in Museum's network namespace, which a
  restart replaces).
- ``cli_account_add`` / ``cli_unlimited``: the CLI's ``account add`` and
  ``admin update-subscription --no-limit``, official payload only (not run here).

Parsing is separate from the guest (facts in, values out): tests/host/test_admin.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from rich.markup import escape
from rich.table import Table

from . import grammar, mailbox, stack, vocab
from .errors import BadInput, SettingsError, StageFailed
from .guest import Guest
from .progress import console, info
from .settings import Settings, rewrite_local
from .state import LabPaths

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUBJECT_CODE = re.compile(r"Verification code: ([0-9]{6})\b")
SKIPPING = re.compile(r"Skipping sending email to ([^\s:\"]+): ([^\"\n]*)")
HARDCODED = re.compile(r"Added hard coded ott for ([^\s:\"]+) : ([0-9]{6})\b")
ADDED = re.compile(r"Added ott for [^\s:\"]+: ([0-9]{6})\b")
# the article greps "SendEmailOTT" (upstream's caller field); the stand-in logs no
# caller, so the lab's grep also names the messages themselves
LOG_GREP = "grep -E -e SendEmailOTT -e 'Skipping sending email to' -e 'ott for'"
USERS_SQL = "SELECT user_id, email, creation_time FROM users ORDER BY creation_time, user_id"
CLI_PAYLOADS = ("official", "tarball")      # the real ente-cli image


def check_email(email: str) -> str:
    """The task's EMAIL argument, by the settings' e-mail grammar (exit 2 otherwise)."""
    if not grammar.is_email(email):
        raise BadInput(f"{grammar.show(email)} is not an e-mail address",
                       hint="letters, digits and . _ % + - before the @, a DNS name after it; "
                            "nothing was changed")
    return email


@dataclass(frozen=True)
class Code:
    code: str
    where: str          # "mailbox" or "log"
    evidence: str       # the subject line / the log line


# ---------------------------------------------------------------- one-time codes
def code_from_mail(messages: list[mailbox.Message], email: str) -> Code | None:
    """The newest ``Verification code: NNNNNN`` mail for ``email`` (messages oldest first)."""
    for m in reversed(mailbox.for_address(messages, email)):
        hit = SUBJECT_CODE.search(m.subject)
        if hit:
            return Code(hit.group(1), "mailbox", f"{m.date}  {m.subject}  {m.message_id}".strip())
    return None


def code_from_log(text: str, email: str) -> Code | None:
    """The newest code for ``email`` in Museum's log: ``Skipping sending email to <addr>:
    Verification code: <code>`` (or, with an older subject, the ``Added ott for <hash>:
    <code>`` line before it), or ``Added hard coded ott for <addr> : <code>``."""
    want = email.lower()
    found: Code | None = None
    added = ""
    for raw in text.splitlines():
        line = ANSI.sub("", raw).rstrip()
        hit = ADDED.search(line)
        if hit:
            added = hit.group(1)
            continue
        hit = HARDCODED.search(line)
        if hit and hit.group(1).lower() == want:
            found = Code(hit.group(2), "log", line)
            continue
        hit = SKIPPING.search(line)
        if hit and hit.group(1).lower() == want:
            in_subject = SUBJECT_CODE.search(hit.group(2))
            code = in_subject.group(1) if in_subject else added
            if code:
                found = Code(code, "log", line)
    return found


def museum_log(guest: Guest, settings: Settings) -> str:
    """The OTT lines of Museum's log (the article's docker-compose logs | grep)."""
    cmd = stack.compose_command(settings, "logs", "--no-color", "ente-museum") + f" 2>&1 | {LOG_GREP}"
    return guest.run(cmd, check=False).stdout


def ott(guest: Guest, settings: Settings, email: str) -> Code:
    check_email(email)
    found = code_from_mail(mailbox.read(guest), email)
    if found:
        console.print(f"found in the catch-all mailbox {vocab.CATCHALL_MBOX} "
                      f"(./labctl lab.mail {escape(email)}):\n  {escape(found.evidence)}")
    else:
        found = code_from_log(museum_log(guest, settings), email)
        if found:
            console.print("no mail for it; found in Museum's log (the article: "
                          "docker-compose logs ente-museum | grep SendEmailOTT):\n  "
                          + escape(found.evidence))
    if not found:
        raise StageFailed(f"no one-time code for {email}: not in {vocab.CATCHALL_MBOX}, "
                          "not in Museum's log",
                          hint="ask for one first (sign up in the web app, or POST /users/ott); "
                               "then ./labctl lab.mail and ./labctl lab.logs museum")
    console.print(f"one-time code for {escape(email)}: [bold]{found.code}[/]")
    return found


# ---------------------------------------------------------------- users
@dataclass(frozen=True)
class User:
    user_id: int
    email: str
    created: str


def parse_users(text: str) -> list[User]:
    """``psql -At -F '|'`` rows of USERS_SQL -> users."""
    out = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        created = parts[2].strip()
        if created.isdigit():        # upstream: microseconds since the epoch
            created = datetime.fromtimestamp(int(created) / 1e6, UTC).strftime("%Y-%m-%d")
        out.append(User(int(parts[0]), parts[1].strip(), created))
    return out


def psql_users(guest: Guest, settings: Settings) -> list[User]:
    cmd = (f"docker exec ente-postgres psql -U {shlex.quote(settings.db.user)} "
           f"-d {shlex.quote(settings.db.name)} -At -F '|' -c {shlex.quote(USERS_SQL)}")
    res = guest.run(cmd, check=False)
    if not res.ok:
        raise StageFailed(f"psql in ente-postgres failed (exit {res.exited}): "
                          f"{guest.redact(res.output).strip()[-300:]}",
                          hint="./labctl lab.status (is the stack running?); ./labctl lab.logs postgres")
    return parse_users(res.stdout)


def payload(guest: Guest, settings: Settings) -> str:
    """The payload the VM runs ('auto' is resolved there at lab.up)."""
    if settings.stack.payload != "auto":
        return settings.stack.payload
    res = guest.run(". /etc/ente-lab/stack.conf && printf %s \"$STACK_PAYLOAD\"", check=False)
    return res.stdout.strip() if res.ok else "standin"


def users(guest: Guest, settings: Settings, admin: str = "") -> list[User]:
    if admin:
        check_email(admin)
    if payload(guest, settings) in CLI_PAYLOADS:
        cmd = "docker exec ente-cli ente admin list-users" + (f" -a {shlex.quote(admin)}" if admin else "")
        _cli(guest, cmd, "(the CLI, official images; needs ./labctl lab.cli-account-add first)",
             hint="./labctl lab.cli-account-add (log the admin in), and the admin "
                  "promoted with ./labctl lab.admin EMAIL")
        return []
    found = psql_users(guest, settings)
    t = Table(title="Ente accounts (users table)")
    for col in ("Email", "ID", "Created"):
        t.add_column(col)
    for u in found:
        t.add_row(escape(u.email), str(u.user_id), u.created)
    console.print(t)
    console.print("stand-in payload: this is the equivalent of the CLI's `ente admin list-users` "
                  f"(which needs Museum's admin API): psql in ente-postgres, `{USERS_SQL}`",
                  highlight=False)
    if not found:
        console.print("no accounts yet: sign up in the web app first")
    return found


def user_id(guest: Guest, settings: Settings, email: str) -> int:
    want = email.lower()
    for u in psql_users(guest, settings):
        if u.email.lower() == want:
            return u.user_id
    raise StageFailed(f"no Ente account has the address {email}",
                      hint="sign up first (the web app, then ./labctl lab.ott EMAIL for the code); "
                           "./labctl lab.users lists the accounts")


# ---------------------------------------------------------------- admins in the settings file
ADMINS_BLOCK = re.compile(r"^admins[ \t]*:.*(?:\n(?:[ \t]+\S.*|-.*))*", re.M)


def with_admin(text: str, uid: int) -> tuple[str, list[int], list[int]]:
    """The settings file's text with ``uid`` in its top-level ``admins`` list: the
    rest of the text (other keys, comments) is kept; the admins block is rewritten as
    one flow list. Returns (text, before, after). Falls back to a full YAML dump
    (comments lost) only when the text edit does not give the expected document."""
    from .settings import load_yaml_text
    data = load_yaml_text(text) if text.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(["the settings file must be a mapping"])
    before = data.get("admins") or []
    if not isinstance(before, list):
        raise SettingsError([f"admins = {grammar.show(before)}: must be a list of account ids"])
    after = [*before, uid] if uid not in before else list(before)
    line = "admins: [" + ", ".join(str(x) for x in after) + "]"
    if ADMINS_BLOCK.search(text):
        new = ADMINS_BLOCK.sub(line, text, count=1)
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    want = {**data, "admins": after}
    try:
        ok = load_yaml_text(new) == want
    except yaml.YAMLError:
        ok = False
    if not ok:
        new = yaml.safe_dump(want, default_flow_style=False, sort_keys=False)
    return new, list(before), after


def write_admin(root: Path, uid: int) -> tuple[Path, list[int], list[int]]:
    """Add ``uid`` to ``admins`` in the user's settings file, validated first
    (all settings, as a task would load them), written atomically (mode kept)."""
    def edit(text: str) -> tuple[str, tuple[list[int], list[int]]]:
        new, before, after = with_admin(text, uid)
        return new, (before, after)
    path, (before, after) = rewrite_local(root, edit)
    return path, before, after


def restart_museum(guest: Guest, settings: Settings) -> None:
    """The article's restart: ``docker-compose restart ente-museum``. socat runs in
    Museum's network namespace (network_mode: service:ente-museum); a restart gives
    Museum a new namespace and leaves socat in the old, empty one, so it is restarted
    after Museum (docker/compose#6626, #10263)."""
    for service in ("ente-museum", "ente-socat"):
        guest.run(stack.compose_command(settings, "restart", service),
                  hint=f"./labctl lab.logs {service}")


def promote(guest: Guest, paths: LabPaths, settings: Settings, email: str) -> int:
    """``lab.admin``: find the id, keep it in the settings, converge, restart Museum."""
    from . import converge
    from .render import render_lab
    check_email(email)
    uid = user_id(guest, settings, email)
    console.print(f"{escape(email)}: user id [bold]{uid}[/]")
    path, before, after = write_admin(paths.root, uid)
    if before == after:
        info(f"  {path}: admins already {after}")
    else:
        info(f"  {path}: admins {before} -> {after}")
    new = settings.model_copy(update={"admins": after})
    render_lab(paths, new)
    museum_yaml = paths.rendered / new.paths.compose_dir.lstrip("/") / "museum.yaml"
    admins = ((yaml.safe_load(museum_yaml.read_text()) or {}).get("internal") or {}).get("admins")
    info(f"  {new.paths.compose_dir}/museum.yaml internal.admins: {admins}")
    converge.converge(guest, paths)
    info("  docker-compose restart ente-museum (the article), then ente-socat (it shares "
         "Museum's network namespace, which the restart replaces)")
    restart_museum(guest, new)
    console.print(f"{escape(email)} (user id {uid}) is an admin; the next converge keeps it "
                  f"({path.name}: admins {after})")
    return uid


# ---------------------------------------------------------------- the CLI (official payload only)
def need_cli(guest: Guest, settings: Settings) -> None:
    got = payload(guest, settings)
    if got not in CLI_PAYLOADS:
        raise BadInput(f"the CLI's admin commands need the official images (stack.payload is {got})",
                       hint="the stand-in CLI has no admin API; ./labctl lab.users lists the "
                            "accounts with psql instead")


def cli_account_add_command() -> str:
    return "sudo docker exec -it ente-cli ente account add"


def cli_unlimited(guest: Guest, settings: Settings, email: str, admin: str) -> None:
    check_email(email)
    check_email(admin)
    need_cli(guest, settings)
    cmd = (f"docker exec ente-cli ente admin update-subscription -a {shlex.quote(admin)} "
           f"-u {shlex.quote(email)} --no-limit")
    _cli(guest, cmd, hint="./labctl lab.cli-account-add (the admin logged in to the CLI), "
                          "./labctl lab.admin ADMIN_EMAIL")


def _cli(guest: Guest, cmd: str, note: str = "", *, hint: str) -> None:
    """Run one Ente CLI command in the ente-cli container, showing it and its output."""
    console.print(f"$ {cmd}" + (f"   {note}" if note else ""))
    res = guest.run(cmd, check=False)
    console.print(escape(guest.redact(res.output)), highlight=False)
    if not res.ok:
        what = " ".join(cmd.split()[3:6])
        raise StageFailed(f"{what} exited {res.exited}", hint=hint)
