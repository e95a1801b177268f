"""Workshop mode (issue 17): attendees type the article's steps; the lab checks each.

The steps, in the article's order, are ``STEPS``. Each names its article section
(docs/article-sections.txt), the manifest entries it owns (``owns``: a predicate over
render's ``Entry`` -- path, service, section, template -- never a second list of
files), and a ``check``: a pure function from guest ``Facts`` (gathered in one SSH
round trip by ``FACTS_PROGRAM``) to a ``Verdict``: done / not done / wrong (with the
exact symptom) / works, with pitfall NAME (the article's literal text where it is a
known pitfall; ``lab.explain NAME`` says why), plus the section to reread.

Everything the lab renders that no step owns is *plumbing*: what the article assumes
is there before its first step (the port-80 vhost that answers ACME challenges,
dehydrated's configuration, the lab's accounts, dnsmasq's isolated configuration).

A step left for the attendee is put in its *starting state*: a whole file it owns is
absent (removed by converge, as a manifest entry of kind ``absent``), except the files
the article edits rather than creates, which get the distribution's text
(``START_TEXT``: Debian's master.cf without submission, main.cf without the article's
lines, the hook without its sudo reloads); a shared file's managed block is emptied;
directories are left alone. ``plan_for(step)`` computes, from the manifest, the one
converge that brings the VM to the start of STEP: every earlier step as the lab
renders it, every later one in its starting state. Facts vs verdicts (pyinfra style):
``plan_for`` and every ``check`` are tested as data (tests/host/test_workshop.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import shlex
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import detect, vocab
from .errors import BadInput
from .render import Entry
from .settings import Settings

DONE, NOT_DONE, WRONG, PITFALL = "done", "not done", "wrong", "works, with pitfall"
STATES = (DONE, NOT_DONE, WRONG, PITFALL)
BASE_SNAPSHOT = "workshop-base"
SASL_LINK = detect.POSTFIX_SASL_CONF
USERS_CONF = "/etc/ente-lab/users.conf"
SITES = "/etc/apache2/sites-enabled"
EMPTY_BLOCK = (f"{vocab.BLOCK_BEGIN}\n# ente-lab workshop: this step is the attendee's; "
               f"add the article's lines below the block\n{vocab.BLOCK_END}\n")


@dataclass(frozen=True)
class Verdict:
    step: str
    state: str                      # one of STATES
    symptom: str = ""               # what is wrong or missing, exactly
    section: str = ""               # the article section to reread
    pitfalls: tuple[str, ...] = ()  # with PITFALL (or a WRONG caused by a known pitfall)

    @property
    def label(self) -> str:
        if self.state == PITFALL:
            return f"{PITFALL} {', '.join(self.pitfalls)}"
        return self.state


@dataclass
class Facts:
    """What the guest showed, in one round trip (``FACTS_PROGRAM``); tests build it by hand."""

    files: dict[str, str | None] = field(default_factory=dict)   # path -> text (None: missing)
    links: dict[str, str] = field(default_factory=dict)          # path -> target
    dirs: dict[str, bool] = field(default_factory=dict)          # path -> is a directory
    postconf: dict[str, str] = field(default_factory=dict)       # postconf -n
    master: list[str] = field(default_factory=list)              # postconf -M: service/type
    master_params: dict[str, str] = field(default_factory=dict)  # postconf -P: svc/type/param -> value
    smtp587: dict[str, Any] = field(default_factory=dict)        # the submission probe
    smtp25: dict[str, Any] = field(default_factory=dict)         # a plain MTA's MAIL FROM on 25
    users: dict[str, bool] = field(default_factory=dict)         # name -> exists
    saslauthd: dict[str, Any] = field(default_factory=dict)      # running, testsaslauthd answer
    network: dict[str, str] | None = None                        # docker network inspect
    containers: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> state, health, ip
    compose_config: dict[str, Any] = field(default_factory=dict) # docker-compose config -q
    apache_configtest: dict[str, Any] = field(default_factory=dict)
    https: dict[str, dict[str, Any]] = field(default_factory=dict)   # what -> status, body, acao
    dns: dict[str, list[str]] = field(default_factory=dict)      # name -> addresses (@127.0.0.1)
    services: dict[str, bool] = field(default_factory=dict)      # rc.d name -> running

    def text(self, path: str) -> str:
        return self.files.get(path) or ""

    def exists(self, path: str) -> bool:
        return self.files.get(path) is not None or path in self.links or self.dirs.get(path, False)

    def under(self, directory: str) -> dict[str, str]:
        prefix = directory.rstrip("/") + "/"
        return {p: t for p, t in self.files.items() if p.startswith(prefix) and t is not None}


@dataclass(frozen=True)
class Context:
    """What the checks compare the facts with (from the settings and the rendered tree)."""

    settings: Settings
    env_names: tuple[str, ...] = ()      # the names the lab's .env defines
    dirs: tuple[str, ...] = ()           # the directories of the "directories" step
    compose_files: tuple[str, ...] = ()  # the files of the "compose files" step

    @property
    def compose_dir(self) -> str:
        return self.settings.paths.compose_dir

    def path(self, name: str) -> str:
        return f"{self.compose_dir.rstrip('/')}/{name}"


Check = Callable[[Facts, Context], Verdict]


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    section: str                         # docs/article-sections.txt
    owns: Callable[[Entry], bool]        # which manifest entries are this step's
    check: Check
    types: str                           # what the attendee types (docs/workshop.md)
    force: Callable[[Entry], bool] = lambda e: False   # plumbing re-applied when solved
    undo: tuple[str, ...] = ()           # guest commands that leave it undone
    after: tuple[str, ...] = ()          # guest commands once it is converged
    probes: tuple[str, ...] = ()         # PROBES its check reads (files and postconf: always)


def _v(step: str, state: str, symptom: str = "", pitfalls: Iterable[str] = ()) -> Verdict:
    return Verdict(step, state, symptom, SECTION[step], tuple(pitfalls))


def _findings(facts: Facts, ctx: Context, *names: str) -> list[detect.Finding]:
    """The production detectors (entelab/detect.py) over the guest's files."""
    files = detect.from_lab({p: t for p, t in facts.files.items() if t is not None},
                            ctx.compose_dir)
    if SASL_LINK in facts.links:
        files.texts[SASL_LINK] = facts.text(detect.SASL2_CONF)
    out: list[detect.Finding] = []
    for name in names:
        out += [f for f in detect.DETECTORS[name](files) if f.pitfall]
    return out


def _with_pitfalls(step: str, facts: Facts, ctx: Context, *names: str) -> Verdict:
    found = _findings(facts, ctx, *names)
    if found:
        names_found = list(dict.fromkeys(f.name for f in found))
        first = found[0]
        return _v(step, PITFALL, f"{first.path}:{first.line}: {first.excerpt}", names_found)
    return _v(step, DONE)


def _active(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


# ------------------------------------------------------------------ the checks
def check_apache_proxy(f: Facts, ctx: Context) -> Verdict:
    s = ctx.settings
    sites = f.under(SITES)
    for host, port in ((s.api_host, s.ports.museum), (s.web_host, s.ports.web)):
        vhosts = [t for t in sites.values() if re.search(rf"(?mi)^\s*ServerName\s+{re.escape(host)}\s*$", t)
                  and "<VirtualHost *:443>" in t]
        if not vhosts:
            return _v("apache_proxy", NOT_DONE, f"no <VirtualHost *:443> with ServerName {host} in {SITES}/")
        proxied = [re.findall(r'(?mi)^\s*ProxyPass\s+"?http://127\.0\.0\.1:(\d+)/?"?', t) for t in vhosts]
        ports = {p for ps in proxied for p in ps}
        if not ports:
            return _v("apache_proxy", NOT_DONE, f"the {host} vhost has no ProxyPass to 127.0.0.1")
        if str(port) not in ports:
            return _v("apache_proxy", WRONG, f"the {host} vhost proxies to 127.0.0.1:{', '.join(sorted(ports))}; "
                      f"the backend listens on 127.0.0.1:{port}")
    if f.apache_configtest and not f.apache_configtest.get("ok", True):
        out = (f.apache_configtest.get("output") or "").strip().splitlines()
        return _v("apache_proxy", WRONG, "apachectl configtest fails: " + (out[0] if out else "?"))
    return _with_pitfalls("apache_proxy", f, ctx, "wellknown_in_location")


def check_docker_network(f: Facts, ctx: Context) -> Verdict:
    d = ctx.settings.docker
    if not f.network:
        return _v("docker_network", NOT_DONE, f"no Docker network {d.network} (docker network ls)")
    if f.network.get("subnet") != d.subnet:
        return _v("docker_network", WRONG, f"{d.network} has subnet {f.network.get('subnet')}; the lab's "
                  f"addresses (museum_ip {d.museum_ip}) need {d.subnet}")
    if f.network.get("gateway") != d.gateway:
        return _v("docker_network", WRONG, f"{d.network} has gateway {f.network.get('gateway')}, not {d.gateway}: "
                  "dnsmasq and Museum's DNS use that address")
    return _v("docker_network", DONE)


def check_directories(f: Facts, ctx: Context) -> Verdict:
    missing = [d for d in ctx.dirs if not f.dirs.get(d)]
    if missing:
        return _v("directories", NOT_DONE, "missing: " + ", ".join(missing))
    return _v("directories", DONE)


def check_web_image(f: Facts, ctx: Context) -> Verdict:
    path = ctx.path("Dockerfile.auth")
    text = f.files.get(path)
    if text is None:
        return _v("web_image", NOT_DONE, f"no {path}")
    m = re.search(r"(?m)^ARG NEXT_PUBLIC_ENTE_ENDPOINT=(\S+)", text)
    want = f"https://{ctx.settings.api_host}"
    if not m:
        return _v("web_image", WRONG, f"{path} has no ARG NEXT_PUBLIC_ENTE_ENDPOINT line")
    if m.group(1).rstrip("/") != want:
        return _v("web_image", WRONG, f"{path} bakes {m.group(1)} into the web app; the API is {want}")
    return _v("web_image", DONE)


def _env(text: str) -> dict[str, str]:
    out = {}
    for line in _active(text):
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("'\"")
    return out


def check_env_file(f: Facts, ctx: Context) -> Verdict:
    path = ctx.path(".env")
    text = f.files.get(path)
    if text is None:
        return _v("env_file", NOT_DONE, f"no {path}")
    env = _env(text)
    dashed = _findings(f, ctx, "dashed_env_names")
    dashed = [x for x in dashed if x.path == path]
    if dashed:
        return _v("env_file", PITFALL, f"{path}:{dashed[0].line}: {dashed[0].excerpt}", ["dashed_env_names"])
    missing = [n for n in ctx.env_names if n not in env and n != "COMPOSE_PROJECT_NAME"]
    if missing:
        return _v("env_file", NOT_DONE, f"{path} lacks {', '.join(missing)}")
    return _v("env_file", DONE)


def check_compose_files(f: Facts, ctx: Context) -> Verdict:
    missing = [p for p in ctx.compose_files if f.files.get(p) is None]
    if missing:
        return _v("compose_files", NOT_DONE, "missing: " + ", ".join(missing))
    quote = _findings(f, ctx, "compose_missing_quote")
    if quote:
        return _v("compose_files", WRONG, f"docker-compose refuses {quote[0].path}: line {quote[0].line} "
                  f"{quote[0].excerpt}", ["compose_missing_quote"])
    if f.compose_config and not f.compose_config.get("ok", True):
        out = (f.compose_config.get("output") or "").strip().splitlines()
        return _v("compose_files", WRONG, "docker-compose config fails: " + (out[-1] if out else "?"))
    return _with_pitfalls("compose_files", f, ctx, "dashed_env_names", "healthcheck_echo")


STACK = ("ente-museum", "ente-postgres", "ente-minio", "ente-socat", "ente-auth-web", "ente-cli")


def check_run_server(f: Facts, ctx: Context) -> Verdict:
    if "ente-museum" not in f.containers:
        return _v("run_server", NOT_DONE, "no ente-museum container (docker-compose up -d)")
    bad = [f"{n}: {f.containers[n].get('state', '?')} {f.containers[n].get('health', '')}".strip()
           for n in STACK if n in f.containers and (f.containers[n].get("state") != "running"
                                                    or f.containers[n].get("health") in ("unhealthy",))]
    absent = [n for n in STACK if n not in f.containers]
    if bad or absent:
        return _v("run_server", WRONG, "; ".join(bad + [f"{n}: not created" for n in absent]))
    ping = f.https.get("api_ping", {})
    if ping.get("status") != 200 or "pong" not in ping.get("body", ""):
        return _v("run_server", WRONG, f"https://{ctx.settings.api_host}/ping answers "
                  f"{ping.get('status', ping.get('error', '?'))} through Apache")
    return _v("run_server", DONE)


def _museum(f: Facts, ctx: Context) -> dict:
    try:
        doc = yaml.safe_load(f.text(ctx.path("museum.yaml")))
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def check_administering(f: Facts, ctx: Context) -> Verdict:
    internal = _museum(f, ctx).get("internal") or {}
    admins = internal.get("admins") if isinstance(internal, dict) else None
    if not admins or not all(isinstance(a, int) for a in admins):
        return _v("administering", NOT_DONE, "no account id in museum.yaml internal.admins (sign up, "
                  "find your user_id: ./labctl lab.users; then docker-compose down && up -d)")
    return _v("administering", DONE)


def check_museum_ip(f: Facts, ctx: Context) -> Verdict:
    ip = ctx.settings.docker.museum_ip
    env = _env(f.text(ctx.path(".env")))
    if env.get("MUSEUM_IPV4_ADDRESS") != ip:
        return _v("museum_ip", NOT_DONE, f".env has MUSEUM_IPV4_ADDRESS={env.get('MUSEUM_IPV4_ADDRESS', '(none)')}, "
                  f"not {ip}")
    if "ipv4_address: ${MUSEUM_IPV4_ADDRESS}" not in f.text(ctx.path("docker-compose.yml")):
        return _v("museum_ip", NOT_DONE, "docker-compose.yml gives ente-museum no ipv4_address: ${MUSEUM_IPV4_ADDRESS}")
    got = f.containers.get("ente-museum", {}).get("ip")
    if got and got != ip:
        return _v("museum_ip", WRONG, f"ente-museum has {got}, not {ip} (an address of the ip-range "
                  "taken first? docs/deviations.md row 30)")
    return _v("museum_ip", DONE)


def check_name_mapping(f: Facts, ctx: Context) -> Verdict:
    s = ctx.settings
    hosts = [ln.split() for ln in _active(f.text("/etc/hosts"))]
    museum = [w for w in hosts if "ente-museum" in w[1:] or f"ente-museum.{s.docker.network}" in w[1:]]
    if not museum:
        return _v("name_mapping", NOT_DONE, "/etc/hosts does not name ente-museum")
    wrong = [w[0] for w in museum if w[0] != s.docker.museum_ip]
    if wrong:
        return _v("name_mapping", WRONG, f"/etc/hosts maps ente-museum to {wrong[0]}, not {s.docker.museum_ip}")
    if not any(f"ente-museum.{s.docker.network}" in w[1:] for w in museum):
        return _v("name_mapping", NOT_DONE, f"/etc/hosts lacks the name ente-museum.{s.docker.network}")
    nets = [ln.split() for ln in _active(f.text("/etc/networks"))]
    if not any(w[:2] == [s.docker.network, s.docker_network_prefix] for w in nets):
        return _v("name_mapping", NOT_DONE, f"/etc/networks lacks '{s.docker.network}   {s.docker_network_prefix}'")
    return _v("name_mapping", DONE)


def check_dnsmasq(f: Facts, ctx: Context) -> Verdict:
    s = ctx.settings
    first = next((ln.split()[1] for ln in _active(f.text("/etc/resolv.conf"))
                  if ln.startswith("nameserver") and len(ln.split()) > 1), "")
    if first != "127.0.0.1":
        return _v("dnsmasq", NOT_DONE, f"the first nameserver in /etc/resolv.conf is {first or '(none)'}, "
                  "not 127.0.0.1")
    if not f.services.get("dnsmasq"):
        return _v("dnsmasq", NOT_DONE, "dnsmasq is not running (/etc/rc.d/rc.dnsmasq start)")
    name = f"ente-museum.{s.docker.network}"
    got = f.dns.get(name, [])
    if got != [s.docker.museum_ip]:
        return _v("dnsmasq", WRONG, f"nslookup {name} 127.0.0.1 answers {' '.join(got) or 'NXDOMAIN'}, "
                  f"not {s.docker.museum_ip} (killall -HUP dnsmasq after editing /etc/hosts)")
    return _v("dnsmasq", DONE)


def check_sasl(f: Facts, ctx: Context) -> Verdict:
    text = f.files.get(detect.SASL2_CONF)
    if text is None:
        return _v("sasl", NOT_DONE, f"no {detect.SASL2_CONF}")
    conf = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in _active(text) if ":" in ln)}
    if conf.get("pwcheck_method") != "saslauthd":
        return _v("sasl", WRONG, f"{detect.SASL2_CONF}: pwcheck_method is {conf.get('pwcheck_method', '(unset)')}, "
                  "not saslauthd")
    mechs = conf.get("mech_list", "").upper().split()
    if sorted(mechs) != ["LOGIN", "PLAIN"]:
        return _v("sasl", WRONG, f"{detect.SASL2_CONF}: mech_list is {' '.join(mechs) or '(unset: every mechanism)'}; "
                  "the article: PLAIN LOGIN only")
    if not f.saslauthd.get("running"):
        return _v("sasl", NOT_DONE, "saslauthd is not running (chmod +x /etc/rc.d/rc.saslauthd; "
                  "/etc/rc.d/rc.saslauthd start)")
    if SASL_LINK not in f.links and f.files.get(SASL_LINK) is None:
        return _v("sasl", PITFALL, f"no {SASL_LINK}: this Postfix reads its SASL config there, not "
                  f"{detect.SASL2_CONF}", ["sasl_wrong_dir"])
    return _v("sasl", DONE)


def check_mail_user(f: Facts, ctx: Context) -> Verdict:
    user = ctx.settings.smtp.username
    if not f.users.get(user):
        return _v("mail_user", NOT_DONE, f"no system user {user} (useradd ... {user})")
    answer = f.saslauthd.get("test", "")
    if not f.saslauthd.get("running"):
        return _v("mail_user", NOT_DONE, "saslauthd is not running (step sasl): testsaslauthd cannot answer")
    if not answer.startswith("0: OK"):
        return _v("mail_user", WRONG, f"testsaslauthd -u {user} with museum.yaml's smtp.password answers "
                  f"{answer.strip() or '(nothing)'}: set that password with passwd {user}")
    return _v("mail_user", DONE)


def _auth_in(ehlo: str) -> bool:
    return any(ln.strip().upper().startswith("AUTH") for ln in ehlo.splitlines())


def check_postfix(f: Facts, ctx: Context) -> Verdict:
    if "submission/inet" not in f.master:
        return _v("postfix", NOT_DONE, "no submission service in master.cf: nothing listens on 587")
    p = f.smtp587
    if p.get("error"):
        return _v("postfix", WRONG, f"port 587: {p['error']} (postfix check; postfix reload)")
    ehlo = p.get("ehlo_plain", "")
    auth_before = p.get("auth_before_tls") or [0, ""]
    if _auth_in(ehlo) or auth_before[0] in (334, 235):
        return _v("postfix", WRONG, "AUTH offered before STARTTLS on 587: passwords would cross in "
                  "clear (smtpd_tls_auth_only = yes, TLS encrypt on submission)")
    if "STARTTLS" not in ehlo.upper():
        return _v("postfix", WRONG, "no STARTTLS on 587 (smtpd_tls_cert_file/smtpd_tls_key_file, "
                  "smtpd_tls_security_level)")
    if p.get("tls_error"):
        return _v("postfix", WRONG, f"STARTTLS on 587 fails: {p['tls_error']}")
    if not _auth_in(p.get("ehlo_tls", "")):
        return _v("postfix", WRONG, "no AUTH after STARTTLS on 587 (smtpd_sasl_auth_enable = yes for submission)")
    login = p.get("login") or [0, ""]
    if login[0] != 235:
        wrong_dir = _findings(f, ctx, "sasl_wrong_dir") or (
            SASL_LINK not in f.links and f.files.get(SASL_LINK) is None)
        return _v("postfix", WRONG, f"{login[0]} on the right password for {ctx.settings.smtp.username} "
                  f"({str(login[1])[:80]})", ["sasl_wrong_dir"] if wrong_dir else [])
    if f.postconf.get("mynetworks_style") != "class":
        return _v("postfix", NOT_DONE, "main.cf lacks mynetworks_style = class")
    if not re.search(r"(?m)^[^#\n]*sudo\b.*\bpostfix reload", f.text(detect.HOOK)) \
            and not re.search(r'(?m)^[^#\n]*"\$\{SUDO\}"\s+-n\s+/usr/sbin/postfix reload', f.text(detect.HOOK)):
        return _v("postfix", NOT_DONE, f"{detect.HOOK}: deploy_cert does not reload Postfix "
                  "(sudo /usr/sbin/postfix reload)")
    cert = _findings(f, ctx, "mail_cert_mismatch")
    if cert:
        return _v("postfix", WRONG, f"{cert[0].note}: Museum's STARTTLS check will fail",
                  ["mail_cert_mismatch"])
    return _with_pitfalls("postfix", f, ctx, "tls_encrypt_main_cf", "missing_sudoers")


def check_cors(f: Facts, ctx: Context) -> Verdict:
    found = _findings(f, ctx, "cors_article_headers", "cors_printed_fix")
    pre = f.https.get("api_preflight", {})
    acao = pre.get("acao", [])
    if found:
        names = list(dict.fromkeys(x.name for x in found))
        return _v("cors", WRONG, f"{found[0].path}:{found[0].line}: {found[0].excerpt}: the browser's "
                  "signup fails with 'Network Error'" + (f" (preflight Access-Control-Allow-Origin: "
                                                         f"{', '.join(acao)})" if acao else ""), names)
    if len(acao) > 1:
        return _v("cors", WRONG, "the preflight of POST /users/ott carries "
                  f"{len(acao)} Access-Control-Allow-Origin values ({', '.join(acao)})")
    return _v("cors", DONE)


# ------------------------------------------------------------------ the steps
def _src(*names: str) -> Callable[[Entry], bool]:
    return lambda e: e.src in names


def _section(name: str) -> Callable[[Entry], bool]:
    return lambda e: e.section == name


STEPS: tuple[Step, ...] = (
    Step("apache_proxy", "Apache reverse proxy for the API and the web app",
         "Apache reverse proxy configuration",
         _src("apache/api-vhost.conf.j2", "apache/web-vhost.conf.j2"), check_apache_proxy,
         "the proxy lines in the two TLS vhosts; apachectl configtest; apachectl -k graceful",
         probes=("apache",)),
    Step("docker_network", "The ente.lan Docker network", "Docker network",
         _section("Docker network"), check_docker_network,
         "docker network create --driver=bridge --subnet=... --ip-range=... --gateway=... ente.lan",
         undo=("docker network rm {network} >/dev/null 2>&1 || true",),
         after=("docker network inspect {network} >/dev/null 2>&1 || docker network create "
                "--driver=bridge --subnet={subnet} --ip-range={ip_range} --gateway={gateway} {network}",),
         probes=("docker",)),
    Step("directories", "The compose and data directories", "Create directories",
         lambda e: e.service == "ente" and e.kind in ("dir", "datadir"), check_directories,
         "mkdir -p /usr/local/docker-ente; mkdir -p /opt/dockerfiles/ente/{cli-data,...}",
         # the empty ones only (deepest first): a lab's data stays
         undo=("for d in {dirs}; do rmdir \"$d\" 2>/dev/null; done; true",)),
    Step("web_image", "Dockerfile.auth for the web app image",
         "Cloning the git repository and preparing the web app image",
         _section("Cloning the git repository and preparing the web app image"), check_web_image,
         "Dockerfile.auth in /usr/local/docker-ente"),
    Step("env_file", "The .env file", "Considerations for the .env file",
         _section("Considerations for the .env file"), check_env_file,
         "/usr/local/docker-ente/.env with the secrets (the article's generator commands)"),
    Step("compose_files", "museum.yaml, cli-config.yaml, minio-provision.sh, docker-compose.yml",
         "Creating the Docker Compose files",
         lambda e: e.service == "ente" and e.kind == "file" and e.section == "Creating the Docker Compose files",
         check_compose_files, "the four files in /usr/local/docker-ente; docker-compose config -q",
         probes=("compose",)),
    Step("run_server", "Start the stack", "Running the server", lambda e: False, check_run_server,
         "cd /usr/local/docker-ente; docker-compose up -d; curl https://ente.<domain>/ping",
         # docker-compose down without the compose files (the converge before the undo
         # commands removed them): the project's containers by label; the data stays
         undo=("docker ps -aq --filter label=com.docker.compose.project={project} | "
               "xargs -r docker rm -f >/dev/null 2>&1; true",),
         after=("/etc/rc.d/rc.ente status >/dev/null 2>&1 || /etc/rc.d/rc.ente start",),
         probes=("docker", "https")),
    Step("administering", "Sign up, find your id, make it an admin", "Administering the server",
         lambda e: False, check_administering,
         "sign up in the web app; docker-compose logs ente-museum | grep user_id; internal.admins "
         "in museum.yaml; docker-compose down; docker-compose up -d"),
    Step("museum_ip", "Museum's fixed address (already in .env and the compose file)",
         "Assign IP address to the Museum server", lambda e: False, check_museum_ip,
         "nothing new: check MUSEUM_IPV4_ADDRESS in .env and ipv4_address in docker-compose.yml",
         probes=("docker",)),
    Step("name_mapping", "/etc/hosts and /etc/networks", "Add IP / name mapping to the host",
         _src("network/hosts.j2", "network/networks.j2"), check_name_mapping,
         "172.21.0.5 ente-museum ente-museum.ente.lan >> /etc/hosts; ente.lan 172.21 >> /etc/networks"),
    Step("dnsmasq", "dnsmasq answers the lab's names", "DNS serving local IPs",
         _src("network/resolv.conf.j2"), check_dnsmasq,
         "nameserver 127.0.0.1 at the top of /etc/resolv.conf; killall -HUP dnsmasq; "
         "nslookup ente-museum.ente.lan",
         probes=("services", "dns")),
    Step("sasl", "Cyrus SASL via saslauthd", "Configuring SASL",
         lambda e: e.service == "sasl", check_sasl,
         "/etc/sasl2/smtpd.conf (pwcheck_method, mech_list); /etc/rc.d/rc.saslauthd start",
         probes=("saslauthd",)),
    Step("mail_user", "The verification user", "Create the mail user", lambda e: False, check_mail_user,
         "useradd -c \"Ente Verification\" -m -g users -s /bin/false verification; passwd verification; "
         "testsaslauthd -u verification -p ...",
         force=lambda e: e.path == USERS_CONF,
         undo=("id -u {smtp_user} >/dev/null 2>&1 && userdel -r {smtp_user} >/dev/null 2>&1; true",),
         probes=("users", "saslauthd")),
    Step("postfix", "Postfix: submission, TLS, SASL AUTH; the dehydrated hook and sudoers",
         "Configuring Postfix",
         lambda e: (e.service in ("postfix", "sudoers") and e.src != "postfix/catchall.regexp.j2")
         or e.src == "dehydrated/hook.sh.j2",
         check_postfix,
         "master.cf submission line; main.cf lines (postconf -e); postfix check; postfix reload; "
         "the hook's deploy_cert lines; /etc/sudoers.d/postfix_reload",
         probes=("smtp587", "smtp25")),
    Step("cors", "No Access-Control-* lines in front of Museum", "CORS", lambda e: False, check_cors,
         "nothing (or remove the Header lines); signup in the browser works",
         probes=("https",)),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
SECTION: dict[str, str] = {s.name: s.section for s in STEPS}
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}


def get(name: str) -> Step:
    if name not in BY_NAME:
        raise BadInput(f"unknown workshop step {name[:60]!r}; known, in the article's order: "
                       f"{', '.join(STEP_NAMES)}", hint="./labctl lab.workshop.steps lists them")
    return BY_NAME[name]


def owner(entry: Entry) -> str | None:
    """The step that owns ``entry`` (None: plumbing)."""
    for step in STEPS:
        if step.owns(entry):
            return step.name
    return None


# ------------------------------------------------------------------ starting states
def start_main_cf(text: str) -> str:
    """main.cf before the article's edits: the lab's (isolation kept) with Debian's TLS
    defaults back and the article's lines commented out."""
    article = ("mynetworks_style", "smtpd_tls_cert_file", "smtpd_tls_key_file",
               "smtpd_tls_security_level", "smtpd_tls_auth_only", "smtpd_sasl_auth_enable",
               "syslog_name", "smtpd_recipient_restrictions")
    out = []
    for line in text.splitlines():
        if line.startswith("#ente-lab: (set below) "):
            out.append(line[len("#ente-lab: (set below) "):])
        elif line.split("=", 1)[0].strip() in article and not line.startswith("#"):
            out.append("#ente-lab workshop (the article's step): " + line)
        else:
            out.append(line)
    return "\n".join(out) + "\n"


DEBIAN_SUBMISSION = ("#submission inet n       -       y       -       -       smtpd\n"
                     "#  -o syslog_name=postfix/submission\n"
                     "#  -o smtpd_tls_security_level=encrypt\n"
                     "#  -o smtpd_sasl_auth_enable=yes\n"
                     "#  -o smtpd_tls_auth_only=yes\n")


def start_master_cf(text: str) -> str:
    """master.cf as Debian ships it (master.cf.dist): submission commented out."""
    m = re.search(r"(?ms)^# BEGIN ente-lab.*?^# END ente-lab\n", text)
    return text if m is None else text[:m.start()] + DEBIAN_SUBMISSION + text[m.end():]


def start_hook(text: str) -> str:
    """The hook without its sudo checks and reloads: what the article's reader has from
    the Let's Encrypt article, before "add these lines at the end of that function"."""
    return "".join(ln for ln in text.splitlines(keepends=True)
                   if '"${SUDO}" -n /usr/sbin/' not in ln)


START_TEXT: dict[str, Callable[[str], str]] = {
    "/etc/postfix/main.cf": start_main_cf,
    "/etc/postfix/master.cf": start_master_cf,
    detect.HOOK: start_hook,
}


@dataclass
class Plan:
    """One converge that brings the VM to the start of a step (or to a step solved)."""

    entries: list[Entry]                  # what converge plans from
    texts: dict[str, bytes]               # path -> the bytes the tree must hold
    force: frozenset[str] = frozenset()   # written and reloaded even when they match
    undo: list[str] = field(default_factory=list)    # guest commands afterwards
    after: list[str] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_for(rendered: list[tuple[Entry, bytes]], done: Iterable[str], settings: Settings) -> Plan:
    """Entries for: plumbing and the ``done`` steps as rendered; every other step in its
    starting state. Pure: facts in (the rendered tree), a plan out."""
    done = set(done)
    for name in done:
        get(name)
    out = Plan(entries=[], texts={})
    for entry, data in rendered:
        mine = owner(entry)
        if mine is None or mine in done:
            out.entries.append(entry)
            out.texts[entry.path] = data
            continue
        if entry.kind in ("dir", "datadir"):
            continue                       # left alone (converge never removes a directory)
        if entry.merge == "block":
            new = dataclasses.replace(entry)
            out.texts[entry.path] = EMPTY_BLOCK.encode()
        elif entry.path in START_TEXT and entry.kind == "file":
            new = dataclasses.replace(entry)
            out.texts[entry.path] = START_TEXT[entry.path](data.decode()).encode()
        else:
            new = dataclasses.replace(entry, kind="absent", mode="0000", target="")
            out.texts[entry.path] = b""
        new.sha256 = _sha(out.texts[entry.path]) if new.kind != "absent" else _sha(b"absent")
        out.entries.append(new)
    fmt = command_fields(settings, rendered)
    forced = set()
    for step in STEPS:
        if step.name in done:
            forced |= {e.path for e, _ in rendered if step.force(e)}
            out.after += [c.format(**fmt) for c in step.after]
    for step in reversed(STEPS):          # later steps first: the stack stops before its network goes
        if step.name not in done:
            out.undo += [c.format(**fmt) for c in step.undo]
    out.force = frozenset(forced)
    return out


def command_fields(settings: Settings, rendered: list[tuple[Entry, bytes]]) -> dict[str, str]:
    """What the steps' undo/after commands name: the settings' values (grammar-checked)
    and the lab's directories, deepest first, shell-quoted."""
    from .stack import PROJECT
    d = settings.docker
    dirs = sorted((e.path for e, _ in rendered if BY_NAME["directories"].owns(e)),
                  key=lambda p: (-p.count("/"), p))
    return {"network": d.network, "subnet": d.subnet, "ip_range": d.ip_range, "gateway": d.gateway,
            "smtp_user": settings.smtp.username, "dirs": " ".join(shlex.quote(p) for p in dirs),
            "project": PROJECT}


def steps_before(name: str) -> list[str]:
    return list(STEP_NAMES[:STEP_NAMES.index(get(name).name)])


def context(settings: Settings, rendered: list[tuple[Entry, bytes]]) -> Context:
    env_text = next((d.decode() for e, d in rendered if e.section == "Considerations for the .env file"), "")
    return Context(settings=settings, env_names=tuple(_env(env_text)),
                   dirs=tuple(e.path for e, _ in rendered if BY_NAME["directories"].owns(e)),
                   compose_files=tuple(e.path for e, _ in rendered if BY_NAME["compose_files"].owns(e)))


def check_all(facts: Facts, ctx: Context, steps: Iterable[str] = ()) -> list[Verdict]:
    """The verdicts of ``steps`` (every step when empty), in the article's order."""
    wanted = set(steps)
    return [step.check(facts, ctx) for step in STEPS if not wanted or step.name in wanted]


# The guest probes FACTS_PROGRAM can run, by name -> the Facts fields each fills. The
# files, links, directories and postconf -n/-M/-P are always read (cheap); a check of
# some steps runs only the probes those steps' checks read (Step.probes): under TCG
# the Postfix step's check then takes about half of a full one's 5-7 s.
PROBES: dict[str, tuple[str, ...]] = {
    "smtp587": ("smtp587",), "smtp25": ("smtp25",), "users": ("users",), "saslauthd": ("saslauthd",),
    "services": ("services",), "docker": ("network", "containers"), "compose": ("compose_config",),
    "apache": ("apache_configtest",), "https": ("https",), "dns": ("dns",),
}


def probes_for(steps: Iterable[str] = ()) -> tuple[str, ...]:
    """The probes a check of ``steps`` runs: every probe when none is named."""
    names = list(steps)
    if not names:
        return tuple(PROBES)
    wanted = {p for name in names for p in get(name).probes}
    return tuple(p for p in PROBES if p in wanted)


# ------------------------------------------------------------------ the facts program
FACTS_PROGRAM = textwrap.dedent(r'''
    import glob, json, os, smtplib, socket, ssl, subprocess, sys, http.client
    A = json.loads(sys.argv[1])
    P = set(A["probes"])
    out = {"files": {}, "links": {}, "dirs": {}}
    def sh(cmd, timeout=60):
        try:
            p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout)
            return p.returncode, (p.stdout + p.stderr)
        except Exception as exc:
            return 255, str(exc)
    paths = list(A["files"])
    for d in A["globs"]:
        paths += sorted(glob.glob(d))
    for p in paths:
        if os.path.islink(p):
            out["links"][p] = os.readlink(p)
        try:
            with open(p, "rb") as fh:
                out["files"][p] = fh.read(262144).decode(errors="replace")
        except OSError:
            out["files"].setdefault(p, None)
    for d in A["dirs"]:
        out["dirs"][d] = os.path.isdir(d)
    rc, txt = sh("postconf -n")
    out["postconf"] = dict((k.strip(), v.strip()) for k, _, v in
                           (ln.partition("=") for ln in txt.splitlines() if "=" in ln))
    rc, txt = sh("postconf -M")
    out["master"] = ["/".join(ln.split()[:2]) for ln in txt.splitlines() if ln.strip()]
    rc, txt = sh("postconf -P")
    out["master_params"] = dict((k.strip(), v.strip()) for k, _, v in
                                (ln.partition("=") for ln in txt.splitlines() if "=" in ln))
    def ctx():
        return ssl.create_default_context(cafile=A["cafile"])
    def smtp(port, login):
        r = {}
        try:
            s = smtplib.SMTP(A["mail_host"], port, timeout=20)
        except Exception as exc:
            return {"error": str(exc)}
        try:
            r["ehlo_plain"] = s.ehlo("workshop.invalid")[1].decode()
            code, msg = s.docmd("AUTH", "LOGIN")
            r["auth_before_tls"] = [code, msg.decode()]
            if code == 334:
                s.docmd("*")
            if port == 25:
                code, msg = s.docmd("MAIL", "FROM:<check@workshop.invalid>")
                r["mail_plain"] = [code, msg.decode()]
                s.docmd("RSET")
            try:
                s.starttls(context=ctx())
                r["ehlo_tls"] = s.ehlo("workshop.invalid")[1].decode()
            except Exception as exc:
                r["tls_error"] = str(exc)[:200]
                return r
            if login:
                try:
                    s.login(A["user"], A["password"])
                    r["login"] = [235, "ok"]
                except smtplib.SMTPAuthenticationError as exc:
                    r["login"] = [exc.smtp_code, exc.smtp_error.decode()]
                except smtplib.SMTPException as exc:
                    r["login"] = [0, str(exc)[:200]]
        except Exception as exc:
            r.setdefault("error", str(exc)[:200])
        finally:
            try:
                s.quit()
            except Exception:
                pass
        return r
    # the slow probes run side by side (each waits on a daemon or a fork under TCG)
    import concurrent.futures
    pool = concurrent.futures.ThreadPoolExecutor(4)
    later = {}
    if "smtp587" in P:
        later["smtp587"] = pool.submit(smtp, 587, True)
    if "smtp25" in P:
        later["smtp25"] = pool.submit(smtp, 25, False)
    if "compose" in P:
        later["compose"] = pool.submit(lambda: sh("cd %s && docker-compose config -q" % A["compose_dir_q"])
                                       if os.path.exists(os.path.join(A["compose_dir"], "docker-compose.yml"))
                                       else (0, ""))
    if "apache" in P:
        later["apache"] = pool.submit(sh, "apache2ctl configtest")
    if "users" in P:
        out["users"] = dict((u, sh("id -u " + u)[0] == 0) for u in A["users"])
    if "saslauthd" in P:
        running = sh("/etc/rc.d/rc.saslauthd status")[0] == 0
        test = sh("testsaslauthd -s smtp -u %s -p %s" % (A["user_q"], A["password_q"]), 20)[1] if running else ""
        out["saslauthd"] = {"running": running, "test": test.strip()}
    if "services" in P:
        out["services"] = dict((s, sh("/etc/rc.d/rc.%s status" % s)[0] == 0) for s in A["services"])
    if "docker" in P:
        rc, txt = sh("docker network inspect %s --format '{{json .IPAM.Config}}'" % A["network_q"])
        try:
            cfg = json.loads(txt)[0] if rc == 0 else None
            out["network"] = {"subnet": cfg.get("Subnet", ""), "gateway": cfg.get("Gateway", ""),
                              "ip_range": cfg.get("IPRange", "")} if cfg else None
        except Exception:
            out["network"] = None
        out["containers"] = {}
        fmt = ("{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} "
               "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
        rc, txt = sh("ids=$(docker ps -aq) && [ -n \"$ids\" ] && docker inspect --format '%s' $ids" % fmt)
        for line in (txt.splitlines() if rc == 0 else []):
            w = line.split() + ["", "", "", ""]
            out["containers"][w[0].lstrip("/")] = {"state": w[1], "health": "" if w[2] == "-" else w[2],
                                                   "ip": w[3]}
    for key in ("smtp587", "smtp25"):
        if key in later:
            out[key] = later[key].result()
    if "compose" in later:
        rc, txt = later["compose"].result()
        out["compose_config"] = {"ok": rc == 0, "output": txt[-2000:]}
    if "apache" in later:
        rc, txt = later["apache"].result()
        out["apache_configtest"] = {"ok": rc == 0, "output": txt[-2000:]}
    pool.shutdown()
    class Loopback(http.client.HTTPSConnection):
        # Apache on this machine for the name (SNI, Host), whatever the resolver says: the
        # article's server has public DNS; the lab's names resolve only from the name
        # mapping step on, and "Running the server" comes before it
        def connect(self):
            raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
    def https(host, path, method="GET", headers=None):
        try:
            c = Loopback(host, 443, context=ctx(), timeout=15)
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            body = r.read().decode(errors="replace")[:2000]
            acao = [v for k, v in r.getheaders() if k.lower() == "access-control-allow-origin"]
            return {"status": r.status, "body": body, "acao": acao}
        except Exception as exc:
            return {"error": str(exc)[:200]}
    if "https" in P:
        out["https"] = {"api_ping": https(A["api_host"], "/ping"),
                        "api_preflight": https(A["api_host"], "/users/ott", "OPTIONS",
                                               {"Origin": "https://" + A["web_host"],
                                                "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type,x-client-package"})}
    if "dns" in P:
        out["dns"] = {}
        for n in A["names"]:
            rc, txt = sh("dig +short +time=2 +tries=1 @127.0.0.1 " + n)
            out["dns"][n] = txt.split() if rc == 0 else []
    print(json.dumps(out))
''')


def facts_args(settings: Settings, ctx: Context, manifest: Iterable[Entry], password: str,
               probes: Iterable[str] = tuple(PROBES)) -> dict:
    import shlex
    files = sorted({e.path for e in manifest if e.kind in ("file", "link", "absent")}
                   | {"/etc/hosts", "/etc/networks", "/etc/resolv.conf", detect.SASL2_CONF, SASL_LINK,
                      detect.HOOK, ctx.path("Dockerfile.auth"), ctx.path(".env"), *ctx.compose_files})
    return {"files": files, "globs": [f"{SITES}/*", f"{detect.SUDOERS_DIR}/*"], "dirs": list(ctx.dirs),
            "mail_host": settings.mail_host, "api_host": settings.api_host, "web_host": settings.web_host,
            "cafile": "/etc/ente-lab/acme-root.pem", "user": settings.smtp.username,
            "password": password, "user_q": shlex.quote(settings.smtp.username),
            "password_q": shlex.quote(password), "users": [settings.smtp.username],
            # the checks read dnsmasq's alone; rc.ente status (about 1 s under TCG) is left out:
            # the containers are inspected directly
            "services": [n for n in vocab.SERVICE_NAMES if n != "ente"],
            "network_q": shlex.quote(settings.docker.network),
            "compose_dir": ctx.compose_dir, "compose_dir_q": shlex.quote(ctx.compose_dir),
            "names": [f"ente-museum.{settings.docker.network}"],
            "probes": [p for p in PROBES if p in set(probes)]}


def facts_from(answer: dict) -> Facts:
    known = {f.name for f in dataclasses.fields(Facts)}
    return Facts(**{k: v for k, v in answer.items() if k in known})


def encode(program: str) -> str:
    return base64.b64encode(program.encode()).decode()


def write_tree(plan: Plan, root: Path) -> None:
    """The plan's texts as a rendered tree converge's bundle reads (files only)."""
    for entry in plan.entries:
        if entry.kind not in ("file",):
            continue
        target = root / entry.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(plan.texts[entry.path])
        target.chmod(0o600)


def state_json(verdicts: list[Verdict]) -> str:
    return json.dumps([dataclasses.asdict(v) for v in verdicts], indent=1)
