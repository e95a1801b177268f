"""The Ente compose stack in the VM: its containers, health, smoke checks and logs.

rc.ente (in the guest) starts it; this module only looks at it over the guest
runner: ``docker inspect`` of the compose project's containers, the proxy path
``https://<api host>/ping`` (Apache -> Museum -> PostgreSQL), the web app through
Apache, and the S3 buckets through the MinIO port. ``lab.up`` ends with
``wait_healthy`` + ``smoke``; ``lab.status`` shows ``table``; ``lab.logs`` runs
``docker-compose logs`` in the compose directory.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.markup import escape
from rich.table import Table

from . import payload
from .errors import GuestCommandError, LabError, StageFailed
from .guest import Guest
from .probes import https_get
from .progress import console, info, stage
from .settings import Settings

PROJECT = "ente"                       # COMPOSE_PROJECT_NAME in .env
ONESHOT = "ente-minio-provision"       # runs once, then stays exited (0)
SERVICES = ("ente-museum", "ente-socat", "ente-postgres", "ente-minio", ONESHOT,
            "ente-auth-web", "ente-cli")
BUCKETS = ("b2-eu-cen", "wasabi-eu-central-2-v3", "scw-eu-fr-v3")
STANDIN_LABEL = "org.ente-lab.standin"


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    status: str          # running, exited, restarting, ...
    health: str          # healthy, unhealthy, starting, or "" (no healthcheck)
    exit_code: int
    started: str         # ISO time
    standin: bool

    @property
    def ok(self) -> bool:
        if self.name == ONESHOT:
            return self.status == "exited" and self.exit_code == 0
        return self.status == "running" and self.health in ("", "healthy")

    def uptime(self, now: datetime | None = None) -> str:
        if self.status != "running" or not self.started:
            return "-"
        try:
            start = datetime.fromisoformat(self.started[:26].rstrip("Z") + "+00:00")
        except ValueError:
            return "?"
        secs = int(((now or datetime.now(UTC)) - start).total_seconds())
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def parse_inspect(text: str) -> list[Container]:
    """Containers from ``docker inspect`` JSON (facts in, values out)."""
    out = []
    for c in json.loads(text or "[]"):
        st = c.get("State", {})
        labels = c.get("Config", {}).get("Labels") or {}
        image = c.get("Config", {}).get("Image", "")
        out.append(Container(
            name=c.get("Name", "").lstrip("/"), image=image, status=st.get("Status", "?"),
            health=(st.get("Health") or {}).get("Status", ""), exit_code=int(st.get("ExitCode", 0)),
            started=st.get("StartedAt", ""),
            standin=labels.get(STANDIN_LABEL) == "true" or "standin" in image))
    return sorted(out, key=lambda c: SERVICES.index(c.name) if c.name in SERVICES else 99)


def containers(guest: Guest) -> list[Container]:
    res = guest.run(f"ids=$(docker ps -aq --filter label=com.docker.compose.project={PROJECT}); "
                    "[ -z \"$ids\" ] && echo '[]' || docker inspect $ids", check=False)
    if not res.ok:
        raise GuestCommandError("docker inspect of the stack's containers", res.exited,
                                res.stdout + res.stderr,
                                hint="./labctl lab.ssh --command 'sudo /etc/rc.d/rc.docker status'")
    return parse_inspect(res.stdout)


def table(found: list[Container]) -> Table:
    t = Table(title="Ente stack (docker-compose project 'ente')")
    for col in ("container", "image", "stand-in", "state", "health", "uptime"):
        t.add_column(col)
    for c in found:
        state = f"[green]{c.status}[/]" if c.ok else f"[red]{c.status}[/]"
        if c.status == "exited":
            state += f" ({c.exit_code})"
        t.add_row(c.name, c.image, "[yellow]stand-in[/]" if c.standin else "real",
                  state, c.health or "-", c.uptime())
    return t


def problems(found: list[Container]) -> list[str]:
    by_name = {c.name: c for c in found}
    out = [f"{name}: not created" for name in SERVICES if name not in by_name]
    out += [f"{c.name}: {c.status} {c.health}".rstrip() for c in found if c.name in SERVICES and not c.ok]
    return out


def wait_healthy(guest: Guest, timeout: float = 600) -> list[Container]:
    """Wait until every container is running (and healthy where it has a check)
    and the provisioning one-shot has exited 0."""
    from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

    seen: list[str] = []

    @retry(retry=retry_if_result(bool), stop=stop_after_delay(timeout), wait=wait_fixed(5),
           retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else ["?"])
    def pending() -> list[str]:
        now = problems(containers(guest))
        if now != seen[-1:] and now:
            info("  waiting: " + "; ".join(now))
            seen.append("; ".join(now))
        return now

    left = pending()
    if left:
        raise StageFailed("the Ente stack is not healthy: " + "; ".join(left),
                          hint="./labctl lab.status, then ./labctl lab.logs ente-museum "
                               "(or the container named above)")
    return containers(guest)


def s3_buckets(guest: Guest, settings: Settings, key: str, secret: str, signed: bool = True) -> dict:
    """List the buckets through the S3 API on the MinIO port, from a container on the
    stack's network (the mc image); signed with the given keys, or an unsigned GET."""
    mc = payload.images_for(settings)["mc"]
    net = shlex.quote(settings.docker.network)
    if signed:
        inner = (f"mc alias set lab http://ente-minio:3200 {shlex.quote(key)} {shlex.quote(secret)} "
                 ">/dev/null && mc ls lab")
    else:
        inner = "curl -s -o /dev/null -w '%{http_code}' http://ente-minio:3200/"
    res = guest.run(f"docker run --rm --network {net} --entrypoint sh {shlex.quote(mc)} -c "
                    f"{shlex.quote(inner)}", check=False)
    return {"exit_code": res.exited, "out": res.stdout, "err": res.stderr}


def smoke(guest: Guest, settings: Settings) -> None:
    """The stack's checks printed at the end of lab.up: containers, then the proxy path."""
    with stage("stack: the Ente containers healthy, /ping and the web app through Apache"):
        found = wait_healthy(guest)
        console.print(table(found))
        checks = Table(title="Ente stack smoke check")
        checks.add_column("check")
        checks.add_column("result")
        for host, path, want in ((settings.api_host, "/ping", '"pong"'), (settings.web_host, "/", "<html")):
            checks.add_row(f"https://{host}{path}", _proxied(guest, host, path, want))
        console.print(checks)


def proxied(guest: Guest, host: str, path: str, want: str, timeout: float = 60) -> tuple[bool, str]:
    """One proxy-path check, retried only while Apache answers 502/503/504 (the backend's
    first seconds after a start: a container without a health check counts as up when
    its process runs, before it listens); any other answer is final. Returns (ok, the
    last answer)."""
    from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

    @retry(retry=retry_if_result(lambda r: r[0] == "retry"), stop=stop_after_delay(timeout),
           wait=wait_fixed(3),
           retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else ("", "?"))
    def attempt() -> tuple[str, str]:
        try:
            r = https_get(guest, host, path)
        except LabError as exc:
            return "", exc.message
        if r["status"] == 200 and want in r["body"]:
            return "ok", "200 ok"
        return ("retry" if r["status"] in (502, 503, 504) else ""), f"{r['status']} {r['body'][:60]!r}"

    state, text = attempt()
    return state == "ok", text


def _proxied(guest: Guest, host: str, path: str, want: str, timeout: float = 60) -> str:
    ok, text = proxied(guest, host, path, want, timeout)
    return text if ok else f"[red]{escape(text)}[/]"


def payload_in_guest(guest: Guest) -> str:
    """What the VM runs (its stack.conf), with what it means."""
    res = guest.run(". /etc/ente-lab/stack.conf && printf %s \"$STACK_PAYLOAD\"", check=False)
    name = res.stdout.strip() if res.ok else ""
    return {"standin": "standin (stand-ins for Museum, MinIO, mc, web app, CLI; real PostgreSQL 15, socat)",
            "official": "official (upstream images, pulled in the VM)",
            "tarball": "tarball (images loaded from the user's docker save archive)",
            }.get(name, name or "not configured (./labctl lab.converge)")


def start(guest: Guest, settings: Settings) -> None:
    """Start the stack when it is not running (rc.ente start is idempotent)."""
    with stage(f"stack: rc.ente (payload {settings.stack.payload})"):
        if guest.run("/etc/rc.d/rc.ente status", check=False).ok:
            info("  the stack is running")
            return
        info("  first start in a VM: rc.ente loads any image the box lacks, then docker-compose up -d")
        res = guest.run("/etc/rc.d/rc.ente start", check=False, stream=True)
        if not res.ok:
            raise StageFailed("rc.ente start failed in the VM",
                              hint="./labctl lab.logs ente-museum; ./labctl lab.ssh --command "
                                   "'sudo /etc/rc.d/rc.ente status'")


def compose_command(settings: Settings, *args: str) -> str:
    """A docker-compose command run in the article's compose directory."""
    return f"cd {shlex.quote(settings.paths.compose_dir)} && docker-compose " + " ".join(map(shlex.quote, args))


def service_name(name: str) -> str:
    """'museum' or 'ente-museum' -> 'ente-museum'; anything else is refused."""
    full = name if name.startswith("ente-") else f"ente-{name}"
    if full not in SERVICES:
        raise LabError(f"unknown stack service {name!r}",
                       hint="one of: " + ", ".join(SERVICES) + " (the 'ente-' prefix may be left out)")
    return full
