"""The verify suite (issue 16): named checks of a running lab, each with a result and a time.

Not a pytest run: what ``lab.verify`` prints and what ``lab.upgrade`` runs after applying
a change. Each check returns a ``Check`` (name, ok, detail, seconds) and never raises
for a failure of the lab (an exception inside a check is its failure):

- ``services``: every rc.d service of the lab answers ``status`` (health.services;
  rc.ente is left to the next check);
- ``stack``: every container running (healthy where it has a check), the provisioning
  one-shot exited 0, within a bounded time; a container in a restart loop fails it at
  once, with the log line that says why (e.g. PostgreSQL's ``FATAL:  database files
  are incompatible with server``);
- ``proxy``: ``https://<api host>/ping`` answers pong and ``https://<web host>/`` a page,
  through Apache, TLS verified against the lab root in the guest; and the served
  certificate verifies from the host with the root the host holds;
- ``mail``: a fresh address asks for a code (``POST /users/ott``), the mail reaches the
  catch-all mailbox, its code is accepted by ``/users/verify-email`` (a user id back);
- ``renewal``: a forced renewal; Apache (443) and Postfix (587) serve the new serial.

``run_suite`` runs them in that order; ``table`` prints them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from rich.markup import escape
from rich.table import Table

from . import certs, health, mailbox, probes, stack
from .errors import LabError
from .guest import Guest
from .progress import console
from .settings import Settings
from .state import LabPaths

AUTH_HEADERS = {"X-Client-Package": "io.ente.auth.web", "Content-Type": "application/json"}
SUBJECT_CODE = re.compile(r"Verification code: (\d{6})\b")
CHECKS = ("services", "stack", "proxy", "mail", "renewal")
STACK_TIMEOUT = 180.0        # seconds: a re-created Museum has a 30 s start period under TCG
MAIL_TIMEOUT = 60.0
CRASH_LOOP = 3               # restarts of one container that end the wait at once


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def timed(name: str, fn: Callable[[], str]) -> Check:
    """Run one check body: its return value is the detail of a pass; a LabError or an
    AssertionError (the check's own 'no') is a failure with its message."""
    start = time.monotonic()
    try:
        detail = fn()
        ok = True
    except LabError as exc:
        ok, detail = False, exc.message
    except AssertionError as exc:
        ok, detail = False, str(exc) or "failed"
    except Exception as exc:  # noqa: BLE001 - a check never takes the suite down
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name, ok, detail, round(time.monotonic() - start, 2))


# ------------------------------------------------------------------ the checks
def check_services(guest: Guest) -> str:
    """The system services; rc.ente (the stack) is the ``stack`` check's."""
    states = {n: st for n, st in health.services(guest).items() if n != "ente"}
    down = sorted(name for name, st in states.items() if st.strip() != "running")
    assert states, "no rc.d service answered"
    assert not down, "stopped: " + ", ".join(f"rc.{n}" for n in down)
    return f"{len(states)} rc.d services running"


def restart_counts(guest: Guest) -> dict[str, int]:
    res = guest.run(f"ids=$(docker ps -aq --filter label=com.docker.compose.project={stack.PROJECT}); "
                    "[ -z \"$ids\" ] || docker inspect -f '{{.Name}} {{.RestartCount}}' $ids", check=False)
    out = {}
    for line in res.stdout.splitlines():
        name, _, count = line.strip().lstrip("/").partition(" ")
        if count.isdigit():
            out[name] = int(count)
    return out


def why_down(guest: Guest, container: str, lines: int = 30) -> str:
    """The FATAL/ERROR lines of a container's recent log (what says why it stopped)."""
    res = guest.run(f"docker logs --tail {lines} {container} 2>&1 | grep -E 'FATAL|ERROR|DETAIL|error:' "
                    "| tail -3", check=False)
    return " | ".join(line.strip() for line in res.stdout.splitlines() if line.strip())


def check_stack(guest: Guest, timeout: float = STACK_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while True:
        found = stack.containers(guest)
        left = stack.problems(found)
        if not left:
            return f"{len(found)} containers ok"
        looping = [n for n, c in restart_counts(guest).items() if c >= CRASH_LOOP]
        if looping or time.monotonic() > deadline:
            break
        time.sleep(5)
    names = looping or [p.split(":")[0] for p in left]
    why = "; ".join(f"{n} log: {w}" for n in names if (w := why_down(guest, n)))
    what = f"restart loop: {', '.join(looping)}" if looping else f"not healthy after {timeout:.0f}s"
    raise AssertionError(f"{what} ({'; '.join(left)})" + (f"; {why}" if why else ""))


def check_proxy(guest: Guest, paths: LabPaths, settings: Settings) -> str:
    from . import snapshot
    parts = []
    for host, path, want in ((settings.api_host, "/ping", '"pong"'), (settings.web_host, "/", "<html")):
        ok, answer = stack.proxied(guest, host, path, want)    # 502 only while a backend starts
        assert ok, f"https://{host}{path}: {answer}"
        parts.append(f"{host}{path} 200")
    root, _ = certs.publish_root(guest, paths)
    serial = snapshot.host_tls_serial(snapshot.address(guest), settings.api_host, root)
    parts.append(f"TLS verified from the host (serial {serial})")
    return ", ".join(parts)


def post_json(guest: Guest, settings: Settings, path: str, body: dict) -> dict:
    return probes.https_get(guest, settings.api_host, path, method="POST", body=json.dumps(body),
                            headers=AUTH_HEADERS)


def code_for(guest: Guest, email: str, timeout: float = MAIL_TIMEOUT, after: int = 0) -> str:
    """The code of the newest mail for ``email`` beyond the first ``after`` ones."""
    deadline = time.monotonic() + timeout
    while True:
        got = mailbox.for_address(mailbox.read(guest), email)[after:]
        for msg in reversed(got):
            m = SUBJECT_CODE.search(msg.subject)
            if m:
                return m.group(1)
        if time.monotonic() > deadline:
            raise AssertionError(f"no mail for {email} within {timeout:.0f}s")
        time.sleep(2)


def sign_in_with_code(guest: Guest, settings: Settings, email: str) -> int:
    """``POST /users/ott`` (signup) -> the mail -> ``/users/verify-email``: the user id."""
    before = len(mailbox.for_address(mailbox.read(guest), email))
    r = post_json(guest, settings, "/users/ott", {"email": email, "purpose": "signup"})
    assert r["status"] == 200, f"POST /users/ott for {email}: {r['status']} {r['body'][:120]!r}"
    code = code_for(guest, email, after=before)
    r = post_json(guest, settings, "/users/verify-email", {"email": email, "ott": code})
    assert r["status"] == 200, f"verify-email for {email}: {r['status']} {r['body'][:120]!r}"
    uid = json.loads(r["body"]).get("id")
    assert isinstance(uid, int), f"verify-email answered no user id: {r['body'][:120]!r}"
    return uid


def fresh_address(settings: Settings, prefix: str = "verify") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@{settings.domain}"


def check_mail(guest: Guest, settings: Settings) -> str:
    email = fresh_address(settings)
    uid = sign_in_with_code(guest, settings, email)
    return f"{email}: code mailed and verified (user {uid})"


def check_renewal(guest: Guest, paths: LabPaths, settings: Settings) -> str:
    r = certs.renew_with(guest, paths, settings)
    before, after = r["before"], r["after"]
    for svc in ("apache", "postfix"):
        assert after[svc] == after["file"], f"{svc} serves {after[svc]}, the file is {after['file']}"
        assert after[svc] != before[svc], f"{svc} still serves the old serial {before[svc]}"
    return f"new serial {after['file']} served by Apache and Postfix (was {before['apache']})"


# ------------------------------------------------------------------ the suite
def run_suite(guest: Guest, paths: LabPaths, settings: Settings,
              only: tuple[str, ...] = CHECKS, stack_timeout: float = STACK_TIMEOUT,
              echo: bool = True, fail_fast: bool = False) -> list[Check]:
    """The checks in order; ``fail_fast`` (lab.upgrade) stops at the first failure (the
    rollback comes sooner; the report says which ran)."""
    bodies: dict[str, Callable[[], str]] = {
        "services": lambda: check_services(guest),
        "stack": lambda: check_stack(guest, stack_timeout),
        "proxy": lambda: check_proxy(guest, paths, settings),
        "mail": lambda: check_mail(guest, settings),
        "renewal": lambda: check_renewal(guest, paths, settings),
    }
    out = []
    for name in only:
        c = timed(name, bodies[name])
        if echo:
            console.print(f"  verify {name}: {'[green]ok[/]' if c.ok else '[red]FAILED[/]'} "
                          f"({c.seconds:.1f}s) {escape(c.detail)}", highlight=False)
        out.append(c)
        if fail_fast and not c.ok:
            break
    return out


def table(checks: list[Check], title: str = "verify suite") -> Table:
    t = Table(title=title)
    for col in ("check", "result", "time", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", f"{c.seconds:.1f}s",
                  escape(c.detail))
    return t


def verify(guest: Guest, paths: LabPaths, settings: Settings) -> list[Check]:
    """``lab.verify``: run the suite, print the table; a failed check is a failed task."""
    from .errors import StageFailed
    checks = run_suite(guest, paths, settings)
    console.print(table(checks))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise StageFailed(f"verify: {', '.join(failed)} failed (see the table)",
                          hint="./labctl lab.status; ./labctl lab.logs museum")
    return checks
