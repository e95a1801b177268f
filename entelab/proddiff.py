"""lab.diff: a production server's files against the lab's rendering, pitfalls flagged.

The lab side is rendered in memory from the lab's settings (``stack.payload`` taken as
``official`` so the images are ``settings.images``, the ones a server runs) and the
lab's secrets (generated in memory when there are none; nothing is written). Both sides
are reduced to their significant lines (comments, blank lines, quoting and spacing
dropped), every secret masked (``Masker``), and compared file by file, grouped by the
article's sections. A differing line that a documented deviation explains is tagged with
its row in docs/deviations.md (``DEVIATION_RULES``). Every pitfall found is printed with
its ``lab.explain`` text; any pitfall makes the task exit ``EXIT_PITFALL``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.markup import escape

from . import render
from . import secrets as secrets_mod
from .detect import Files, Finding, detect
from .production import PRODUCTION_FILES, Production
from .progress import console
from .settings import Settings

# The article's sections in the article's order (names as in docs/article-sections.txt).
ARTICLE_ORDER: tuple[str, ...] = (
    "Apache reverse proxy configuration", "Docker network",
    "Cloning the git repository and preparing the web app image",
    "Considerations for the .env file", "Creating the Docker Compose files", "museum.yaml",
    "cli-config.yaml", "minio-provision.sh", "docker-compose.yml",
    "Make the host accept mail from Ente container", "Add IP / name mapping to the host",
    "DNS serving local IPs", "Configuring SASL", "Create the mail user", "Configuring Sendmail",
    "Configuring Postfix", "CORS",
)

# ------------------------------------------------------------------ secrets
SECRET_NAME = re.compile(r"(?i)(pass(word|wd)?|secret|jwt|hash|encryption|minio_root_user|"
                         r"(^|[_.-])key($|[_.-]))")
ASSIGN = re.compile(r"""^\s*(?:-\s*)?(?:export\s+)?["']?([A-Za-z0-9_.-]+)["']?\s*[:=]\s*(.*?)\s*$""")
TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{20,}")
MASK = "<secret>"


def _looks_random(token: str) -> bool:
    return (any(c.isupper() for c in token) and any(c.islower() for c in token)
            and any(c.isdigit() for c in token) and not token.startswith("/"))


def secret_values(text: str) -> set[str]:
    """Values assigned to secret-looking names (PASSWORD, SECRET, KEY, HASH, JWT ...)."""
    out = set()
    for line in text.splitlines():
        m = ASSIGN.match(line)
        if not m or not SECRET_NAME.search(m.group(1)):
            continue
        value = m.group(2).split(" #")[0].strip().strip("\"'")
        # a path (key_file = /etc/...) is not a secret; a base64 value may start with "/"
        # too (1 in 64): random-looking, it is one
        is_path = value.startswith("/") and not _looks_random(value.lstrip("/"))
        if len(value) >= 6 and "${" not in value and not is_path \
                and value.lower() not in ("true", "false"):
            out.add(value)
    return out


class Masker:
    """Replaces every known secret value, and every random-looking token, by ``<secret>``."""

    def __init__(self, values: Iterable[str] = ()):
        self.values: set[str] = {v for v in values if v and len(v) >= 6}

    def learn(self, text: str) -> None:
        self.values |= secret_values(text)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return TOKEN.sub(lambda m: MASK if _looks_random(m.group()) else m.group(), text)


# ------------------------------------------------------------------ significant lines
YAMLISH = (".yml", ".yaml", ".env")


def _unquote(line: str) -> str:
    return re.sub(r"""(["'])([^"'\s#]*)\1""", r"\2", line)


def significant(path: str, text: str, block: bool = False) -> list[str]:
    """The lines that matter: no comments or blank lines, spacing collapsed; YAML/.env
    quoting and trailing comments dropped; main.cf parameters as 'name = value', sorted;
    a lab block file's markers dropped."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if path.endswith(YAMLISH) or path.endswith(".yml"):
            line = _unquote(line.split(" #")[0].rstrip()) if " #" in line else _unquote(line)
        line = " ".join(line.split())
        if path.endswith("/main.cf") and "=" in line and not raw[:1].isspace():
            name, value = line.split("=", 1)
            line = f"{name.strip()} = {value.strip()}"
        out.append(line)
    if path.endswith("/main.cf"):
        out.sort()
    return out


# ------------------------------------------------------------------ deviations
@dataclass(frozen=True)
class Rule:
    deviation: int
    files: str          # fnmatch pattern of the production path
    pattern: str        # regex on a significant line
    sign: str = ""      # '-' production's line only, '+' the lab's only, '' either


# Which documented deviation (docs/deviations.md row) explains a differing line; the
# first rule that matches wins. The import round trip (tests/host/test_proddiff.py)
# proves every line that remains between the article's files and the lab's is covered.
VHOSTS = "/etc/httpd/extra/*.conf"
COMPOSE = "*/docker-compose.yml"
DEVIATION_RULES: tuple[Rule, ...] = (
    Rule(3, VHOSTS, r"Access-Control-"),
    Rule(1, VHOSTS, r"well-known|^ProxyPass !$|^</Location>$|^Alias |Directory|^Options None$|"
                    r"^AllowOverride None$|^Require all granted$"),
    Rule(2, VHOSTS, r"IfDefine|^Define ENTE_LAB_|IfFile|^Protocols |^SSLCertificate(Key)?File "),
    Rule(16, "/etc/hosts", r"."),
    Rule(16, "/etc/dnsmasq.conf", r"."),
    Rule(17, "/etc/postfix/main.cf", r"^(smtpd_tls_security_level|smtpd_sasl_auth_enable|syslog_name|"
                                     r"smtpd_tls_auth_only) ="),
    Rule(31, "/etc/postfix/main.cf", r"^virtual_alias_maps = "),
    Rule(19, "/etc/postfix/main.cf", r"."),
    Rule(17, "/etc/postfix/master.cf", r"^-o (syslog_name|smtpd_tls_security_level|smtpd_sasl_auth_enable|"
                                       r"smtpd_tls_auth_only)="),
    Rule(18, "/etc/postfix/master.cf", r"."),
    Rule(26, "/etc/dehydrated/config", r"."),
    Rule(26, "/etc/dehydrated/domains.txt", r"."),
    Rule(22, "/etc/dehydrated/hook.sh", r"."),
    Rule(21, "/etc/sudoers.d/*", r"."),
    Rule(7, "*/.env", r"^COMPOSE_PROJECT_NAME="),
    Rule(12, "*/.env", r"^ENTE_HARDCODED_OTT_EMAIL="),
    Rule(12, "*/museum.yaml", r"."),
    Rule(9, "*/minio-provision.sh", r"."),
    Rule(5, COMPOSE, r"^ENTE_[A-Z0-9_-]*: \$\{ENTE_"),
    Rule(8, COMPOSE, r"^test: \[ ?CMD(-SHELL)?, (echo|\"?wget)|^interval: 10s$|^timeout: 5s$|^retries: 12$|"
                     r"^start_period: 30s$"),
    Rule(7, COMPOSE, r"^name: |^start_interval: |^tags:$|^- ente-(auth-web|cli):latest$|pg_isready|"
                     r"^interval: 5s$|^retries: 20$|^test:$|^\[$|^\]$|^(CMD|-q|-d|-U),$|"
                     r"^\$\{ENTE_DB_(NAME|USER)\},?$"),
    Rule(11, COMPOSE, r"^- 127\.0\.0\.1:(\$\{ENTE_DB_PORT\}|[0-9]+):(\$\{ENTE_DB_PORT\}|5432)$|^image: postgres"),
    Rule(13, COMPOSE, r"^SSL_CERT_DIR: |^dns:$|^- [0-9.]+$|/etc/ente-lab/ca"),
    Rule(6, COMPOSE, r"^entrypoint: "),
    Rule(9, COMPOSE, r"/minio-data:/data$"),
    Rule(10, COMPOSE, r"^restart: on-failure$"),
    Rule(10, COMPOSE, r"^restart: always$", sign="-"),
    Rule(15, COMPOSE, r"^args:$|^NEXT_PUBLIC_ENTE_ENDPOINT: "),
    Rule(14, COMPOSE, r"ENTE_CLI_|cli-config"),
    Rule(32, COMPOSE, r"^restart: always$|^networks:$|^- ente\.lan$"),
    Rule(27, COMPOSE, r"^image: "),
)


def deviation_of(path: str, line: str, sign: str = "") -> int | None:
    for rule in DEVIATION_RULES:
        if rule.sign and sign and rule.sign != sign:
            continue
        if fnmatch.fnmatch(path, rule.files) and re.search(rule.pattern, line):
            return rule.deviation
    return None


# ------------------------------------------------------------------ comparison
@dataclass
class Change:
    sign: str           # '-' production only, '+' lab only
    line: str           # masked
    deviation: int | None


@dataclass
class FileDiff:
    path: str                   # production path
    lab_path: str               # '' when the lab renders no counterpart
    section: str
    status: str                 # same | differs | missing | unreadable | production-only | lab-only | not-compared
    changes: list[Change] = field(default_factory=list)
    note: str = ""

    @property
    def unexplained(self) -> list[Change]:
        return [c for c in self.changes if c.deviation is None]


@dataclass
class Report:
    host: str
    prod: Production
    diffs: list[FileDiff]
    findings: list[Finding]
    masker: Masker

    @property
    def pitfalls(self) -> list[Finding]:
        return [f for f in self.findings if f.pitfall]


def lab_rendering(settings: Settings, secrets: secrets_mod.Secrets) -> dict[str, tuple[render.Entry, str]]:
    official = settings.model_copy(update={"stack": settings.stack.model_copy(update={"payload": "official"})})
    return {e.path: (e, data.decode()) for e, data in render.render_tree(official, secrets)
            if e.kind == "file"}


def _server_name(text: str, port: str = "443") -> str:
    m = re.search(rf"(?is)<VirtualHost\s+[^>]*:{port}\s*>.*?^\s*ServerName\s+(\S+)", text, re.M)
    return m.group(1).lower() if m else ""


def pair(prod: Production, lab: dict[str, tuple[render.Entry, str]]) -> list[tuple[str, str]]:
    """(production path, lab path or '') for every production file read or looked for."""
    vhosts = {_server_name(t): p for p, (e, t) in lab.items() if e.service == "apache" and _server_name(t)}
    out = []
    for f in prod.files.values():
        kind = f.spec.lab
        if kind == "=":
            out.append((f.path, f.path if f.path in lab else ""))
        elif kind == "vhost":
            out.append((f.path, vhosts.get(_server_name(f.text), "") if f.readable else ""))
        else:
            out.append((f.path, ""))
    return out


def compare(prod: Production, settings: Settings, secrets: secrets_mod.Secrets) -> Report:
    lab = lab_rendering(settings, secrets)
    masker = Masker(secrets.values())
    for f in prod.readable():
        masker.learn(f.text)
    for _, text in lab.values():
        masker.learn(text)
    pairs = pair(prod, lab)
    diffs: list[FileDiff] = []
    for path, lab_path in pairs:
        f = prod.files[path]
        section = f.spec.section
        if f.status in ("missing", "unreadable", "too-large"):
            if f.status == "missing" and f.spec.optional:
                continue
            diffs.append(FileDiff(path, lab_path, section, f.status, note=masker(f.detail)))
            continue
        if not lab_path:
            note = ("no lab vhost has its ServerName" if f.spec.lab == "vhost"
                    else f.spec.note or "the lab renders no counterpart")
            diffs.append(FileDiff(path, "", section, "production-only", note=note))
            continue
        entry, lab_text = lab[lab_path]
        block = entry.merge == "block"
        lab_lines = significant(path, _block(lab_text) if block else lab_text)
        prod_lines = significant(path, f.text)
        if block:
            tokens = {t for ln in lab_lines for t in ln.split()[1:]}
            prod_lines = [ln for ln in prod_lines if tokens & set(ln.split()[1:])]
        changes = _changes(path, [masker(x) for x in prod_lines], [masker(x) for x in lab_lines])
        note = "the lab manages only its block; production lines naming the same hosts compared" if block else ""
        diffs.append(FileDiff(path, lab_path, section, "differs" if changes else "same", changes, note))
    paired = {lp for _, lp in pairs if lp}
    covered = _covered_paths(prod)
    for lab_path, (entry, _) in lab.items():
        if lab_path in paired:
            continue
        inside = any(fnmatch.fnmatch(lab_path, pat) for pat in covered)
        section = next((s.section for s in PRODUCTION_FILES if fnmatch.fnmatch(lab_path, _pat(s.path, prod))),
                       entry.section)
        if inside:
            diffs.append(FileDiff(lab_path, lab_path, section, "lab-only",
                                  note="the lab renders it; production has no such file"))
        else:
            diffs.append(FileDiff(lab_path, lab_path, entry.section, "not-compared",
                                  note="the lab's own plumbing (Debian layout, private CA, test mailbox)"))
    files = Files({f.path: f.text for f in prod.readable()},
                  {f.path for f in prod.files.values() if f.status in ("unreadable", "too-large")},
                  prod.compose_dir)
    return Report(prod.host, prod, diffs, detect(files), masker)


def _pat(path: str, prod: Production) -> str:
    return path.replace("{compose_dir}", prod.compose_dir)


def _covered_paths(prod: Production) -> list[str]:
    return [_pat(s.path, prod) for s in PRODUCTION_FILES if s.lab == "="]


def _block(text: str) -> str:
    inside = text.split(render.MANAGED_BEGIN, 1)[-1].split(render.MANAGED_END, 1)[0]
    return inside


def _changes(path: str, prod_lines: list[str], lab_lines: list[str]) -> list[Change]:
    out = []
    for op in difflib.ndiff(prod_lines, lab_lines):
        if op[:1] in "-+":
            line = op[2:]
            out.append(Change(op[0], line, deviation_of(path, line, op[0])))
    return out


# ------------------------------------------------------------------ the report
def explain_text(name: str) -> str:
    from . import pitfalls
    return pitfalls.explain(name)


def _section_key(section: str) -> tuple[int, str]:
    return (ARTICLE_ORDER.index(section) if section in ARTICLE_ORDER else len(ARTICLE_ORDER), section)


def print_report(rep: Report, sudo_used: bool) -> None:
    from . import pitfalls
    mask = rep.masker
    prod = rep.prod
    out = console.print
    out(f"[bold]lab.diff {escape(rep.host)}[/] (root {escape(prod.root)}): production against the "
        "lab's rendering, secrets masked")
    read = prod.readable()
    via_sudo = [f.path for f in read if f.status == "sudo"]
    out(f"read {len(read)} files" + (f", {len(via_sudo)} with sudo -n: {escape(', '.join(via_sudo))}"
                                     if via_sudo else ""))
    for status in ("missing", "unreadable", "too-large"):
        names = [f.path for f in prod.by_status(status) if not (status == "missing" and f.spec.optional)]
        if names:
            out(f"[yellow]{status}:[/] {escape(', '.join(names))}")
    sections: dict[str, list] = {}
    for d in rep.diffs:
        sections.setdefault(d.section, []).append(d)
    for f in rep.findings:
        sections.setdefault(pitfalls.PITFALLS[f.name].section, [])
    for section in sorted(sections, key=_section_key):
        out("")
        out(f"[bold cyan]== {escape(section)} ==[/]")
        for d in sections[section]:
            lab = f"  <->  lab {escape(d.lab_path)}" if d.lab_path and d.lab_path != d.path else ""
            out(f"  [bold]{escape(d.path)}[/]{lab}: {d.status}" + (f" ({escape(d.note)})" if d.note else ""))
            for c in d.changes:
                colour = "red" if c.sign == "-" else "green"
                tag = f"  [dim](deviation {c.deviation})[/]" if c.deviation else ""
                out(f"    [{colour}]{c.sign} {escape(mask(c.line))}[/]{tag}")
        by_name: dict[str, list[Finding]] = {}
        for f in rep.findings:
            if pitfalls.PITFALLS[f.name].section == section:
                by_name.setdefault(f.name, []).append(f)
        for name, found in by_name.items():
            is_pitfall = any(f.pitfall for f in found)
            label = "[bold red]PITFALL[/]" if is_pitfall else "[yellow]note[/]"
            out(f"  {label} [bold]{name}[/] ({len(found)} {'place' if len(found) == 1 else 'places'}):")
            for f in found:
                where = f"{f.path}:{f.line}" if f.line else f.path
                note = f"  [dim]-- {escape(mask(f.note))}[/]" if f.note else ""
                out(f"    at {escape(where)}: {escape(mask(f.excerpt))}{note}")
            if is_pitfall:
                for line in explain_text(name).splitlines():
                    out(f"      [dim]{escape(line)}[/]")
    out("")
    unexplained = sum(len(d.unexplained) for d in rep.diffs)
    names = sorted({f.name for f in rep.pitfalls})
    out(f"summary: {sum(d.status == 'differs' for d in rep.diffs)} files differ "
        f"({unexplained} differing lines not explained by a documented deviation); "
        + (f"[bold red]{len(rep.pitfalls)} pitfall findings: {', '.join(names)}[/]" if names
           else "[bold green]no pitfall found[/]"))
    if not sudo_used and prod.by_status("unreadable"):
        out("[dim]unreadable files: --sudo reads them with `sudo -n cat` (never a prompt)[/]")


# ------------------------------------------------------------------ the task
def run_diff(host: str, settings: Settings, secrets_path, user: str = "", port: int = 22,
             identity: str = "", sudo: bool = False, root: str = "/") -> Report:
    """lab.diff: read, compare, print; raise PitfallsFound when a pitfall is found."""
    from .errors import PitfallsFound
    from .production import Reader, read_production
    from .progress import stage
    secrets, _ = secrets_mod.load_or_create(secrets_path, dry_run=True)   # never written here
    with stage(f"read {host} over SSH (read-only{', sudo -n cat' if sudo else ''})"):
        reader = Reader.connect(host, user=user, port=port, identity=identity, root=root, sudo=sudo)
        try:
            prod = read_production(reader, host, settings.paths.compose_dir)
        finally:
            reader.close()
    rep = compare(prod, settings, secrets)
    print_report(rep, sudo)
    if rep.pitfalls:
        names = sorted({f.name for f in rep.pitfalls})
        raise PitfallsFound(f"{len(rep.pitfalls)} findings of {len(names)} pitfalls: {', '.join(names)}",
                            hint="./labctl lab.explain NAME says more; the report above shows where")
    return rep
