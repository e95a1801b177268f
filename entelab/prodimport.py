"""lab.import: lab settings (and optionally secrets) that reproduce a production server.

Reads what ``production.read_production`` fetched and maps it onto the lab's settings
keys: names (domains.txt, the vhosts' ServerName, museum.yaml's smtp.host), ports and
images (docker-compose.yml), the Docker network (/etc/networks, .env, the compose file),
paths, database and smtp settings, one-time codes and admins, the ACME user and
contact. Lenient: the article's compose file with the missing quote is repaired line by
line (``parse_compose``); whatever cannot be mapped is listed, never guessed silently.
The result is checked by the lab's own settings validation before anything is written;
a key that fails it is left at the lab's default and listed. Secrets are taken only
with ``--with-secrets``: written like the lab's own (0600), never printed.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import grammar
from . import secrets as secrets_mod
from . import settings as settings_mod
from .detect import CERT_DIR, Files, _postconf
from .errors import BadInput, SettingsError

# compose service -> settings images.<key> (the article's container names)
SERVICE_IMAGES = {"ente-museum": "museum", "ente-postgres": "postgres", "ente-minio": "minio",
                  "ente-minio-provision": "mc", "ente-socat": "socat", "ente-auth-web": "auth_web",
                  "ente-cli": "cli"}
# .env name -> secret name (secrets.GENERATORS)
ENV_SECRETS = {"ENTE_KEY_ENCRYPTION": "key_encryption", "ENTE_KEY_HASH": "key_hash",
               "ENTE_JWT_SECRET": "jwt_secret", "ENTE_DB_PASSWORD": "db_password",
               "ENTE_MINIO_KEY": "minio_key", "ENTE_MINIO_SECRET": "minio_secret"}
# .env names the import reads for settings (the rest are listed as not mapped)
ENV_SETTINGS = {"ENTE_HARDCODED_OTT_EMAIL", "ENTE_DB_PORT", "ENTE_DB_NAME", "ENTE_DB_USER",
                "MUSEUM_IPV4_ADDRESS", "COMPOSE_PROJECT_NAME"}
MUSEUM_KEYS = {"internal", "db", "s3", "key", "jwt", "smtp"}


@dataclass
class Imported:
    data: dict = field(default_factory=dict)          # settings keys (nested) to write
    secrets: dict = field(default_factory=dict)       # secret name -> value (never shown)
    mapped: list[tuple[str, str]] = field(default_factory=list)    # (key, where from)
    unmapped: list[str] = field(default_factory=list)

    def put(self, key: str, value: Any, source: str) -> None:
        node = self.data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        self.mapped.append((key, source))

    def drop(self, key: str) -> None:
        node = self.data
        *parents, last = key.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
        self.mapped = [(k, s) for k, s in self.mapped if k != key]


# ------------------------------------------------------------------ lenient readers
def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or "=" not in s:
            continue
        name, value = s.split("=", 1)
        name = name.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #")[0].strip()
        out[name] = value
    return out


def _requote_flow(line: str) -> str:
    """``key: ["a", b", "c"]`` -> every item of the flow sequence quoted once."""
    m = re.match(r"^(\s*(?:-\s*)?[^:#]+:\s*)\[(.*)\](\s*(?:#.*)?)$", line)
    if not m:
        return line
    items = [i.strip().strip("\"'") for i in m.group(2).split(",")]
    return m.group(1) + "[" + ", ".join(f'"{i}"' for i in items) + "]" + m.group(3)


def parse_compose(text: str) -> tuple[dict, list[str]]:
    """The compose file as a mapping, and what had to be repaired or left out to read it.

    YAML first; if that fails, lines with an unbalanced double quote inside a flow
    sequence are re-quoted item by item, then (at most 20 times) the line YAML still
    stumbles on is left out."""
    notes: list[str] = []
    lines = text.splitlines()
    for attempt in range(22):
        try:
            doc = yaml.safe_load("\n".join(lines))
            return (doc if isinstance(doc, dict) else {}), notes
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if attempt == 0:
                for i, line in enumerate(lines):
                    if line.split(" #")[0].count('"') % 2 == 1:
                        fixed = _requote_flow(line)
                        if fixed != line:
                            lines[i] = fixed
                            notes.append(f"docker-compose.yml line {i + 1}: unbalanced quote repaired "
                                         "to read the file (pitfall compose_missing_quote)")
                continue
            if mark is None or mark.line >= len(lines):
                notes.append("docker-compose.yml: not valid YAML and not repairable; read nothing from it")
                return {}, notes
            notes.append(f"docker-compose.yml line {mark.line + 1}: not valid YAML; left out")
            lines[mark.line] = "#" + lines[mark.line]
    return {}, notes


def _ports(service: dict, env: dict[str, str]) -> dict[int, int]:
    """container port -> published host port of a compose service."""
    out = {}
    for item in service.get("ports") or []:
        text = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), str(item))
        parts = text.split("/")[0].split(":")
        if len(parts) >= 2 and parts[-1].isdigit() and parts[-2].isdigit():
            out[int(parts[-1])] = int(parts[-2])
    return out


# ------------------------------------------------------------------ mapping
def import_settings(files: Files, with_secrets: bool = False) -> Imported:
    imp = Imported()
    env_text = files.get(files.env)
    env = parse_env(env_text) if env_text is not None else {}
    museum: dict = {}
    museum_text = files.get(files.museum)
    if museum_text is not None:
        try:
            loaded = yaml.safe_load(museum_text)
            museum = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            imp.unmapped.append(f"museum.yaml: not valid YAML ({settings_mod.yaml_problem(exc)}); "
                                "read nothing from it")
    compose: dict = {}
    compose_text = files.get(files.compose)
    if compose_text is not None:
        compose, notes = parse_compose(compose_text)
        imp.unmapped += notes
    services = _map(compose.get("services"))
    for path, text in ((files.env, env_text), (files.museum, museum_text), (files.compose, compose_text)):
        if text is None:
            imp.unmapped.append(f"{path}: not read (missing or unreadable); its settings keep the lab's defaults")

    # --- names
    main = files.get("/etc/postfix/main.cf")
    conf = _postconf(main) if main is not None else {}
    domains = files.get("/etc/dehydrated/domains.txt")
    first = next((ln.split("#")[0].split() for ln in (domains or "").splitlines()
                  if ln.split("#")[0].split()), [])
    cert = CERT_DIR.search(conf.get("smtpd_tls_cert_file", (0, ""))[1])
    vhosts = _vhosts(files)
    ports = _all_ports(services, env)
    api = next((n for n, p in vhosts if p == ports.get("museum")), "")
    web = next((n for n, p in vhosts if p == ports.get("web")), "")
    if first:
        domain, source = first[0], "/etc/dehydrated/domains.txt (the certificate's name)"
    elif cert:
        domain, source = cert.group(1), "/etc/postfix/main.cf smtpd_tls_cert_file"
    elif api and "." in api:
        domain, source = api.split(".", 1)[1], "the API vhost's ServerName"
    else:
        domain, source = "", ""
    if domain:
        imp.put("domain", domain, source)
    else:
        imp.unmapped.append("domain: no domains.txt, dehydrated certificate or vhost names it")
    if api and api != f"ente.{domain}":
        imp.put("api_host", api, "ServerName of the vhost proxying to Museum's port")
    if web and web != f"enteauth.{domain}":
        imp.put("web_host", web, "ServerName of the vhost proxying to the web app's port")
    smtp = _map(museum.get("smtp"))
    mail_host = str(smtp.get("host") or "") or conf.get("myhostname", (0, ""))[1]
    if mail_host and mail_host != f"smtp.{domain}":
        imp.put("mail_host", mail_host, "museum.yaml smtp.host")
    if files.exists("/etc/postfix/main.cf"):
        imp.put("mta", "postfix", "/etc/postfix/main.cf exists")

    # --- ports and images
    for key, port in ports.items():
        imp.put(f"ports.{key}", port, "docker-compose.yml ports")
    for service, key in SERVICE_IMAGES.items():
        image = (services.get(service) or {}).get("image") if isinstance(services.get(service), dict) else None
        if image:
            imp.put(f"images.{key}", str(image), f"docker-compose.yml {service} image")
    for service in sorted(set(services) - set(SERVICE_IMAGES)):
        imp.unmapped.append(f"docker-compose.yml service {service}: the lab's stack has no such service")

    # --- Docker network
    networks = _map(compose.get("networks"))
    network = next(iter(networks), "")
    if network:
        imp.put("docker.network", str(network), "docker-compose.yml networks")
    museum_svc = _map(services.get("ente-museum"))
    museum_ip = env.get("MUSEUM_IPV4_ADDRESS", "")
    nets = _map(museum_svc.get("networks"))
    for spec in nets.values():
        if isinstance(spec, dict) and spec.get("ipv4_address") and not museum_ip:
            museum_ip = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), str(spec["ipv4_address"]))
    _network(imp, files, str(network), museum_ip)

    # --- paths, db, smtp, ott, admins
    imp.put("paths.compose_dir", files.compose_dir.rstrip("/"), "where the compose files were read")
    data_dir = _data_dir(services)
    if data_dir:
        imp.put("paths.data_dir", data_dir, "docker-compose.yml volumes")
    db = _map(museum.get("db"))
    for key, var in (("name", "ENTE_DB_NAME"), ("user", "ENTE_DB_USER")):
        value = env.get(var) or db.get(key)
        if value:
            imp.put(f"db.{key}", str(value), f".env {var}" if env.get(var) else f"museum.yaml db.{key}")
    if smtp:
        for key, src in (("port", "port"), ("username", "username"), ("email", "email"),
                         ("sender_name", "sender-name"), ("encryption", "encryption")):
            if smtp.get(src) not in (None, ""):
                value = smtp[src]
                imp.put(f"smtp.{key}", int(value) if key == "port" and str(value).isdigit() else str(value),
                        f"museum.yaml smtp.{src}")
    else:
        imp.unmapped.append("museum.yaml has no smtp block: Museum sends no mail there; the lab's smtp "
                            "settings keep their defaults (the lab always configures mail)")
    ott = list(dict.fromkeys(env.get("ENTE_HARDCODED_OTT_EMAIL", "").split()
                             + [str(e) for e in _dig(museum, "internal", "hardcoded-ott", "emails") or []]))
    if ott:
        imp.put("ott", ott, ".env ENTE_HARDCODED_OTT_EMAIL / museum.yaml internal.hardcoded-ott")
    admins = [a for a in (_dig(museum, "internal", "admins") or []) if isinstance(a, int)]
    if admins:
        imp.put("admins", admins, "museum.yaml internal.admins")

    # --- dehydrated / sudoers
    dconf = parse_env(files.get("/etc/dehydrated/config") or "")
    if dconf.get("CONTACT_EMAIL"):
        imp.put("acme.contact", dconf["CONTACT_EMAIL"], "/etc/dehydrated/config CONTACT_EMAIL")
    if dconf.get("CA"):
        imp.unmapped.append(f"acme.ca: production's CA {dconf['CA']!r} is not used: the lab always issues "
                            "from its private pebble CA")
    users = [ln.split()[0] for _, t in files.under("/etc/sudoers.d") for ln in t.splitlines()
             if ln.strip() and not ln.lstrip().startswith(("#", "Defaults")) and len(ln.split()) > 1]
    if users:
        imp.put("acme.user", users[0], "/etc/sudoers.d (the user the hook's reloads are granted to)")

    for name in sorted(set(env) - ENV_SETTINGS - set(ENV_SECRETS)):
        imp.unmapped.append(f".env {name}: no lab setting")
    for name in sorted(set(museum) - MUSEUM_KEYS):
        imp.unmapped.append(f"museum.yaml {name}: no lab setting")
    if museum.get("s3"):
        imp.unmapped.append("museum.yaml s3: the three bucket definitions are fixed in the lab (MinIO in the stack)")

    if with_secrets:
        _secrets(imp, env, museum, smtp)
    else:
        imp.unmapped.append("secrets: not imported (--with-secrets takes them); the lab keeps its own")
    return imp


def _map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _dig(doc: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def _all_ports(services: dict, env: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for service, key, container in (("ente-museum", "museum", 8080), ("ente-auth-web", "web", None),
                                    ("ente-minio", "minio_api", 3200), ("ente-minio", "minio_console", 3201),
                                    ("ente-postgres", "postgres", None)):
        svc = services.get(service)
        if not isinstance(svc, dict):
            continue
        published = _ports(svc, env)
        if container is None and len(published) == 1:
            out[key] = next(iter(published.values()))
        elif container in published:
            out[key] = published[container]
    return out


def _vhosts(files: Files) -> list[tuple[str, int]]:
    """(ServerName, port of the 127.0.0.1 ProxyPass) of each vhost file in /etc/httpd/extra."""
    out = []
    for _, text in files.under("/etc/httpd/extra"):
        name = re.search(r"(?mi)^\s*ServerName\s+(\S+)", text)
        port = re.search(r"(?mi)^\s*ProxyPass\s+(?:\S+\s+)?[\"']?http://127\.0\.0\.1:(\d+)", text)
        if name and port:
            out.append((name.group(1).lower(), int(port.group(1))))
    return out


def _data_dir(services: dict) -> str:
    sources = []
    for svc in services.values():
        for v in (svc.get("volumes") or []) if isinstance(svc, dict) else []:
            src = str(v).split(":")[0].strip()
            if src.startswith("/") and not src.startswith("/etc/"):
                sources.append(src)
    if not sources:
        return ""
    common = posixpath.commonpath(sources)
    return common if common not in ("/", "") else ""


def _network(imp: Imported, files: Files, network: str, museum_ip: str) -> None:
    subnet = None
    for line in (files.get("/etc/networks") or "").splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2 and network and words[0] == network:
            octets = words[1].split(".")
            try:
                subnet = ipaddress.IPv4Network(".".join(octets + ["0"] * (4 - len(octets)))
                                               + f"/{8 * len(octets)}")
            except ValueError:
                subnet = None
            if subnet:
                imp.put("docker.subnet", str(subnet), f"/etc/networks {network} {words[1]}")
    ip = None
    try:
        ip = ipaddress.IPv4Address(museum_ip) if museum_ip else None
    except ValueError:
        imp.unmapped.append(f"docker.museum_ip: {museum_ip!r} is not an IPv4 address")
    if ip:
        imp.put("docker.museum_ip", str(ip), ".env MUSEUM_IPV4_ADDRESS")
        if subnet is None:
            subnet = ipaddress.IPv4Network(f"{ip}/16", strict=False)
            imp.put("docker.subnet", str(subnet), "the /16 around Museum's address (no /etc/networks line)")
    if subnet is None:
        imp.unmapped.append("docker.subnet: neither /etc/networks nor Museum's address gives it")
        return
    gateway = next(subnet.hosts())
    imp.put("docker.gateway", str(gateway), "the subnet's first address (Docker's default gateway)")
    block = ipaddress.IPv4Network(f"{ip or gateway}/24", strict=False)
    lower, upper = block.subnets(new_prefix=25) if block.subnet_of(subnet) else (subnet, subnet)
    ip_range = upper if ip is None or ip not in upper else lower
    imp.put("docker.ip_range", str(ip_range), "chosen: the half /25 beside Museum's address")
    imp.unmapped.append(f"docker.gateway and docker.ip_range: no file holds them (`docker network "
                        f"inspect {network or 'NETWORK'}` does); set to {gateway} and {ip_range}")


def _secrets(imp: Imported, env: dict[str, str], museum: dict, smtp: dict) -> None:
    found = {secret: env[var] for var, secret in ENV_SECRETS.items() if env.get(var)}
    for secret, keys in (("key_encryption", ("key", "encryption")), ("key_hash", ("key", "hash")),
                         ("jwt_secret", ("jwt", "secret")), ("db_password", ("db", "password"))):
        value = _dig(museum, *keys)
        if value and secret not in found:
            found[secret] = str(value)
    if smtp.get("password"):
        found["sasl_password"] = str(smtp["password"])
    for name in secrets_mod.GENERATORS:
        value = found.get(name)
        if name == "sasl_salt":
            continue
        if value is None:
            imp.unmapped.append(f"secret {name}: not found on the server; the lab generates one")
            continue
        problem = grammar.secret_problem(name, value)
        if value in secrets_mod.ARTICLE_EXAMPLES:
            problem = "is the article's published example value"
        if problem:
            imp.unmapped.append(f"secret {name}: not importable ({problem}); the lab generates one")
            continue
        imp.secrets[name] = value


# ------------------------------------------------------------------ validate and write
def validated(imp: Imported) -> tuple[settings_mod.Settings, list[str]]:
    """Check the imported keys with the lab's validation; a key it refuses goes back to the
    lab's default and is listed as not mapped (its problem said, its value not)."""
    defaults = settings_mod._yaml_file(settings_mod.DEFAULTS_FILE)
    for _ in range(10):
        try:
            return settings_mod.validate(settings_mod._merge(defaults, imp.data), defaults)
        except SettingsError as exc:
            bad = [k for k, _ in imp.mapped if any(p.startswith((k + " ", k + ":", k + "."))
                                                 or p.startswith(k + " =") for p in exc.problems)]
            if not bad:
                raise
            for key in dict.fromkeys(bad):
                imp.drop(key)
                why = next(p for p in exc.problems if p.startswith(key))
                imp.unmapped.append(f"{key}: refused by the lab's settings validation ({why}); lab default kept")
    raise SettingsError(["the imported settings do not validate"])


def settings_yaml(imp: Imported, host: str) -> str:
    head = (f"# ente-lab settings imported by lab.import from {host} on "
            f"{time.strftime('%Y-%m-%d %H:%M')}.\n"
            "# Keys not listed keep the defaults of entelab/settings.defaults.yaml.\n")
    return head + yaml.safe_dump(imp.data, sort_keys=False, default_flow_style=False)


def write_settings(path: Path, text: str, force: bool) -> None:
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{path} exists; lab.import does not overwrite it",
                       hint="--output another file, or --force")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_secrets(path: Path, found: dict, force: bool) -> None:
    """Imported secrets, the missing ones generated, written 0600 like the lab's own."""
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{path} exists; lab.import --with-secrets does not overwrite the lab's secrets",
                       hint="--secrets-file another file, or --force")
    values = {name: found.get(name) or gen() for name, gen in secrets_mod.GENERATORS.items()}
    secrets_mod.write(path, secrets_mod.Secrets(**values))


# ------------------------------------------------------------------ the task
def run_import(host: str, compose_dir: str, output: Path, secrets_file: Path, user: str = "",
               port: int = 22, identity: str = "", sudo: bool = False, root: str = "/",
               with_secrets: bool = False, force: bool = False) -> Imported:
    """lab.import: read, map, validate, write settings (and secrets, 0600); print what was
    mapped from where and what was not (never a secret's value)."""
    from rich.markup import escape

    from .production import Reader, read_production
    from .progress import console, info, stage
    for path, wanted in ((output, True), (secrets_file, with_secrets)):
        if wanted and (path.exists() or path.is_symlink()) and not force:
            raise BadInput(f"{path} exists; lab.import does not overwrite it",
                           hint="--output / --secrets-file another file, or --force")
    with stage(f"read {host} over SSH (read-only{', sudo -n cat' if sudo else ''})"):
        reader = Reader.connect(host, user=user, port=port, identity=identity, root=root, sudo=sudo)
        try:
            prod = read_production(reader, host, compose_dir)
        finally:
            reader.close()
    files = Files({f.path: f.text for f in prod.readable()},
                  {f.path for f in prod.files.values() if f.status in ("unreadable", "too-large")},
                  prod.compose_dir)
    imp = import_settings(files, with_secrets=with_secrets)
    for f in prod.files.values():
        if f.status in ("missing", "unreadable", "too-large") and not (f.status == "missing" and f.spec.optional):
            imp.unmapped.insert(0, f"{f.path}: {f.status}" + (f" ({f.detail})" if f.detail else ""))
    _, warnings = validated(imp)
    write_settings(output, settings_yaml(imp, host), force)
    console.print(f"[bold]lab.import {escape(host)}[/]: settings written to {escape(str(output))}")
    for key, source in imp.mapped:
        info(f"  {key:<22} <- {source}")
    if with_secrets:
        write_secrets(secrets_file, imp.secrets, force)
        info(f"secrets written to {secrets_file} (mode 0600; values not shown): imported "
             f"{', '.join(sorted(imp.secrets)) or 'none'}; the others generated")
    console.print(f"[yellow]not mapped ({len(imp.unmapped)}):[/]")
    for line in imp.unmapped:
        info(f"  - {line}")
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    return imp
