"""Settings: one validated model built from defaults + local file + task options.

Flow: ``settings.defaults.yaml`` (shipped) <- ``settings.local.yaml`` (or the file
named by ENTE_LAB_SETTINGS) <- ``--set key.path=value`` options. The result is
checked twice: by pydantic (types, unknown keys, single values) and by
``cross_checks`` (collisions, overlaps, membership). Every problem is reported
at once as ``SettingsError`` (with type errors present, the cross-key checks run
on the other keys); nothing is written before validation passes.

Each value is checked by its grammar (entelab/grammar.py). Input is bounded:
files of at most 64 KiB of UTF-8, no YAML aliases, at most 20 problems listed;
values in messages are shown literally (repr, shortened; printed with markup escaped).

The lab's settings are deliberately not part of Invoke's configuration (no
``INVOKE_*`` environment variable or invoke.yaml key can reach them).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import grammar as g
from . import pitfalls as pitfalls_mod
from .errors import FIX_HINT, SettingsError

__all__ = ["FIX_HINT", "Settings", "SettingsError", "load_settings", "is_email", "is_hostname",
           "cross_checks", "parse_override", "read_yaml"]

DEFAULTS_FILE = Path(__file__).with_name("settings.defaults.yaml")
LOCAL_FILE_NAME = "settings.local.yaml"
ENV_SETTINGS_FILE = "ENTE_LAB_SETTINGS"
DOCKER_DEFAULT_BRIDGE = ipaddress.IPv4Network("172.17.0.0/16")
# Ports the lab's own services hold inside the VM (Apache, Postfix, dnsmasq, pebble).
RESERVED_PORTS = {22: "ssh", 25: "smtp", 53: "dnsmasq", 80: "Apache http",
                  443: "Apache https", 587: "submission", 14000: "pebble ACME",
                  15000: "pebble management"}
MAX_FILE_BYTES = 64 * 1024        # settings and secrets files, and one --set option
MAX_PROBLEMS = 20                 # problems shown; the rest are counted
MAX_MEMORY_MIB = 1024 * 1024      # when the host's memory cannot be read

is_hostname = g.is_dns_name
is_email = g.is_email


def capped(problems: list[str], limit: int = MAX_PROBLEMS, hidden: int = 0) -> list[str]:
    """At most ``limit`` problems, then one line counting the rest (``hidden`` of them
    were never described)."""
    total = len(problems) + hidden
    if total <= limit:
        return problems
    return [*problems[:limit], f"... and {total - limit} more problems (fix these first)"]


def host_memory_mib() -> int:
    """This host's memory in MiB (the upper bound of vm.memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return MAX_MEMORY_MIB


# --------------------------------------------------------------------------- model

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)


def _v(*fields: str, grammar):
    """A field validator applying one grammar function to ``fields``."""
    return field_validator(*fields)(classmethod(lambda cls, v: grammar(v)))


def _blank_or(grammar):
    """``grammar`` for a value that may also be left empty ('' passes unchecked)."""
    return lambda v: v and grammar(v)


class Ports(_Section):
    museum: int
    web: int
    minio_api: int
    minio_console: int
    postgres: int

    _check = _v("*", grammar=g.port)


class Docker(_Section):
    network: str
    subnet: str
    ip_range: str
    gateway: str
    museum_ip: str

    _network = _v("network", grammar=g.docker_network)
    _net = _v("subnet", "ip_range", grammar=g.cidr)
    _ip = _v("gateway", "museum_ip", grammar=g.ipv4)


class Paths(_Section):
    compose_dir: str
    data_dir: str

    _path = _v("*", grammar=g.abs_path)


class Db(_Section):
    name: str
    user: str

    _ident = _v("*", grammar=g.pg_identifier)


class Smtp(_Section):
    port: int
    username: str
    email: str
    sender_name: str
    encryption: Literal["", "tls", "ssl"]

    _p = _v("port", grammar=g.port)
    _u = _v("username", grammar=g.account)
    _s = _v("sender_name", grammar=g.sender_name)
    _email = _v("email", grammar=_blank_or(g.email))


class Postfix(_Section):
    """Postfix settings beyond the article's (main.cf); safe to change on a running lab."""

    message_size_limit: int

    _size = _v("message_size_limit", grammar=g.message_size)


class Upgrade(_Section):
    """lab.upgrade (issue 16)."""

    keep_dumps: int

    _n = _v("keep_dumps", grammar=g.dump_count)


class Images(_Section):
    museum: str
    postgres: str
    minio: str
    mc: str
    socat: str
    auth_web: str
    cli: str

    _ref = _v("*", grammar=g.image_ref)


class Stack(_Section):
    """Where the compose stack's images come from (docs/payloads.md)."""

    payload: Literal["standin", "official", "tarball", "auto"]
    tarball: str = ""

    _tarball = _v("tarball", grammar=_blank_or(g.archive_file))

    @model_validator(mode="after")
    def _needs_tarball(self) -> Stack:
        if self.payload == "tarball" and not self.tarball:
            raise ValueError("payload 'tarball' needs stack.tarball: the path of a 'docker save' "
                             "archive on this host (README: Payloads)")
        if self.tarball and not Path(self.tarball).is_file():
            raise ValueError(f"stack.tarball {self.tarball} is not a readable file on this host; "
                             "make it with the README's 'docker save' command or set payload: standin")
        return self


class Acme(_Section):
    user: str
    ca: str
    contact: str

    _u = _v("user", grammar=g.account)
    _ca = _v("ca", grammar=g.https_url)
    _contact = _v("contact", grammar=_blank_or(g.email))


class Vm(_Section):
    hostname: str
    memory: int
    cpus: int
    accel: Literal["auto", "kvm", "qemu"]
    provider: Literal["libvirt", "virtualbox"]
    management_network: str

    _hostname = _v("hostname", grammar=g.host_label)
    _net = _v("management_network", grammar=g.cidr)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int) -> int:
        if v < 2048:
            raise ValueError("must be at least 2048 (MiB): Docker, PostgreSQL and Postfix share the VM")
        top = host_memory_mib()
        if v > top:
            raise ValueError(f"must be at most this host's memory, {top} (MiB)")
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: int) -> int:
        cores = os.cpu_count() or 1
        if not 1 <= v <= cores:
            raise ValueError(f"must be between 1 and this host's {cores} cores")
        return v


class Pitfalls(_Section):
    """The article's pitfalls the lab can switch on (docs/pitfalls.md, ``lab.explain NAME``).

    One bool per ``switch=True`` entry of entelab/pitfalls.py; all off by default.
    """

    cors_article_headers: bool = False
    cors_printed_fix: bool = False
    cors_working_fix: bool = False
    mail_cert_mismatch: bool = False
    dashed_env_names: bool = False
    missing_sudoers: bool = False
    wellknown_in_location: bool = False
    tls_encrypt_main_cf: bool = False
    sasl_wrong_dir: bool = False
    healthcheck_echo: bool = False
    compose_missing_quote: bool = False

    @property
    def on(self) -> list[str]:
        """The names switched on, in the registry's order."""
        return [name for name in pitfalls_mod.SWITCHES if getattr(self, name)]


if tuple(Pitfalls.model_fields) != pitfalls_mod.SWITCHES:     # one list: the registry's
    raise RuntimeError("settings.Pitfalls fields differ from pitfalls.SWITCHES")


class Settings(_Section):
    domain: str
    api_host: str = ""
    web_host: str = ""
    mail_host: str = ""
    mta: Literal["postfix", "sendmail"]
    ports: Ports
    docker: Docker
    paths: Paths
    db: Db
    smtp: Smtp
    postfix: Postfix
    ott: list[str] = Field(default_factory=list, max_length=100)
    admins: list[int] = Field(default_factory=list, max_length=100)
    images: Images
    stack: Stack
    acme: Acme
    vm: Vm
    pitfalls: Pitfalls = Field(default_factory=Pitfalls)
    upgrade: Upgrade

    @field_validator("domain", "api_host", "web_host", "mail_host")
    @classmethod
    def _host(cls, v: str, info) -> str:
        if info.field_name != "domain" and v == "":
            return v
        return g.dns_name(v)

    @field_validator("ott")
    @classmethod
    def _ott(cls, v: list[str]) -> list[str]:
        for i, entry in enumerate(v):
            try:
                g.ott_entry(entry)
            except ValueError:
                raise ValueError(f"entry {i} ({g.show(entry)}) must be 'email,6 digits' "
                                 "like 'me@home.lan,305719'") from None
        return v

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[int]) -> list[int]:
        for i, uid in enumerate(v):
            if not 1 <= uid <= g.INT64_MAX:
                raise ValueError(f"entry {i} ({g.show(uid)}) must be a positive Ente account id "
                                 f"(1 .. {g.INT64_MAX})")
        return v

    # ---- derived values (the article's names) ----
    def model_post_init(self, _ctx: Any) -> None:
        self.api_host = self.api_host or f"ente.{self.domain}"
        self.web_host = self.web_host or f"enteauth.{self.domain}"
        self.mail_host = self.mail_host or f"smtp.{self.domain}"
        self.smtp.email = self.smtp.email or f"verification@{self.domain}"
        self.acme.contact = self.acme.contact or f"hostmaster@{self.domain}"

    @property
    def cert_names(self) -> list[str]:
        """One dehydrated certificate, named after the domain, covering all lab names."""
        names = [self.domain, self.mail_host, self.api_host, self.web_host]
        return list(dict.fromkeys(names))

    @property
    def ott_pairs(self) -> list[tuple[str, str]]:
        return [tuple(e.split(",", 1)) for e in self.ott]  # type: ignore[misc]

    @property
    def docker_network_prefix(self) -> str:
        """The /etc/networks form of the subnet (172.21.0.0/16 -> 172.21)."""
        net = ipaddress.ip_network(self.docker.subnet)
        octets = str(net.network_address).split(".")[: max(1, net.prefixlen // 8)]
        return ".".join(octets)


# --------------------------------------------------------------------------- loading

class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (``*name``: no alias bombs, no shared nodes) and
    a key given twice in one mapping (YAML would silently keep the last)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed here", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key_node.value[:40]!r} given twice",
                            key_node.start_mark)
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """Parse YAML with the lab's loader (safe, no aliases). Raises yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def read_yaml(path: Path, what: str = "settings", fix: str = "") -> Any:
    """Read a small YAML file of the lab's (settings or secrets) defensively.

    Refused with ``SettingsError``: not a regular file (a directory, a FIFO),
    unreadable, larger than 64 KiB, not UTF-8, not valid YAML, aliases. An
    empty file is ``None``.
    """
    fix = fix or "fix it or delete it"
    where = str(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SettingsError([f"{where}: cannot read it ({exc.strerror}); {fix}"]) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SettingsError([f"{where}: is {kind}; the {what} file must be a YAML file ({fix})"])
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError([f"{where}: cannot read it ({exc.strerror}); {fix}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsError([f"{where}: larger than {MAX_FILE_BYTES // 1024} KiB; a {what} file "
                             f"is a few lines ({fix})"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError([f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                             f"({fix})"]) from None
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as exc:
        raise SettingsError([f"{where}: not valid YAML: {yaml_problem(exc)} ({fix})"]) from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the snippet of the file PyYAML would quote
    (in the secrets file that line holds a secret)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = " ".join(p for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            text += f" (line {mark.line + 1}, column {mark.column + 1})"
    else:
        text = str(exc)
    text = " ".join(text.split())
    return (text if len(text) <= 200 else text[:197] + "...")


def _yaml_file(path: Path) -> dict:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError([f"{str(path)}: must be a mapping of settings (key: value lines), "
                             f"got {type(data).__name__} {g.show(data)}"])
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


KEY_PATH = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*", re.ASCII)


def parse_override(text: str) -> dict:
    """``vm.memory=6144`` -> {"vm": {"memory": 6144}} (value parsed as YAML)."""
    if len(text) > MAX_FILE_BYTES:
        raise SettingsError([f"--set {g.show(text)}: longer than {MAX_FILE_BYTES // 1024} KiB"])
    if "=" not in text:
        raise SettingsError([f"--set {g.show(text)}: must be KEY=VALUE like vm.memory=6144"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not KEY_PATH.fullmatch(key):
        raise SettingsError([f"--set {g.show(text)}: the key must be a dotted settings key "
                             "like vm.memory"])
    try:
        value = load_yaml_text(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    key = show_key(".".join(str(p) for p in loc))
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        if parent is Pitfalls and loc[-1] in pitfalls_mod.PITFALLS:
            return (f"{key}: a pitfall without a switch yet (./labctl lab.explain {loc[-1]}); "
                    f"switches: {', '.join(known)}")
        close = difflib.get_close_matches(str(loc[-1])[:80], known, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{key}: unknown setting{hint} (known here: {', '.join(known)})"
    if err["type"] == "missing":
        return f"{key}: required setting is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif err["type"].endswith("_type") or err["type"] in ("int_parsing",):
        msg = f"wrong type: {msg.lower()}"
    else:
        msg = msg
    return f"{key} = {g.show(value)}: {msg}"


def show_key(key: str) -> str:
    return g.show_key(key)


def cross_checks(s: Settings) -> tuple[list[str], list[str]]:
    """Checks across keys. Returns (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    d = s.docker
    subnet = ipaddress.IPv4Network(d.subnet)
    ip_range = ipaddress.IPv4Network(d.ip_range)
    gateway = ipaddress.IPv4Address(d.gateway)
    museum = ipaddress.IPv4Address(d.museum_ip)
    mgmt = ipaddress.IPv4Network(s.vm.management_network)

    # ports: distinct, and not one the lab's own services hold
    seen: dict[int, str] = {}
    for name, port in s.ports.model_dump().items():
        if port in seen:
            errors.append(f"ports.{name} = {port}: collides with ports.{seen[port]}; "
                          "every published port must be different")
        elif port in RESERVED_PORTS:
            errors.append(f"ports.{name} = {port}: collides with {RESERVED_PORTS[port]} "
                          f"(port {port}) in the VM; choose another port")
        seen.setdefault(port, name)

    # networks
    if not ip_range.subnet_of(subnet):
        errors.append(f"docker.ip_range = {d.ip_range!r}: must lie inside docker.subnet {d.subnet}")
    for key, net in (("docker.subnet", subnet), ("vm.management_network", mgmt)):
        if net.overlaps(DOCKER_DEFAULT_BRIDGE):
            errors.append(f"{key} = {str(net)!r}: overlaps Docker's default bridge 172.17.0.0/16; "
                          "choose an unused range (article: 172.21.0.0/16)")
    if subnet.overlaps(mgmt):
        errors.append(f"docker.subnet = {d.subnet!r}: overlaps vm.management_network "
                      f"{s.vm.management_network}; the two must be apart")
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        errors.append(f"docker.gateway = {d.gateway!r}: must be a host address inside docker.subnet {d.subnet}")
    if museum not in subnet or museum in (subnet.network_address, subnet.broadcast_address):
        errors.append(f"docker.museum_ip = {d.museum_ip!r}: must be a host address inside "
                      f"docker.subnet {d.subnet}")
    elif museum == gateway:
        errors.append(f"docker.museum_ip = {d.museum_ip!r}: equals docker.gateway; "
                      "pick another address in the subnet")
    elif museum in ip_range:
        warnings.append(f"docker.museum_ip = {d.museum_ip!r} lies inside docker.ip_range {d.ip_range}: "
                        "Docker may hand it to another container first (the article does this); "
                        "an address outside the ip-range is safer")

    # host names: valid once derived from the domain, and distinct
    names = {"domain": s.domain, "api_host": s.api_host, "web_host": s.web_host,
             "mail_host": s.mail_host}
    for key in ("api_host", "web_host", "mail_host"):
        if not g.is_dns_name(names[key]):
            errors.append(f"{key} = {g.show(names[key])} (derived from domain): not a valid DNS "
                          "name (too long); set a shorter domain or set it explicitly")
    fqdn = f"{s.vm.hostname}.{s.domain}"
    if not g.is_dns_name(fqdn):
        errors.append(f"vm.hostname = {g.show(s.vm.hostname)}: {g.show(fqdn)} is too long for a DNS "
                      "name (253 characters); choose a shorter vm.hostname or domain")
    for key, value in (("smtp.email", s.smtp.email), ("acme.contact", s.acme.contact)):
        if not g.is_email(value):
            errors.append(f"{key} = {g.show(value)} (derived from domain): not a valid e-mail "
                          "address (too long); set a shorter domain or set it explicitly")
    for a, b in (("api_host", "web_host"), ("api_host", "mail_host"), ("web_host", "mail_host")):
        if names[a] == names[b]:
            errors.append(f"{b} = {g.show(names[b])}: same as {a}; each service needs its own name")
    if s.smtp.encryption == "" and s.smtp.port == 465:
        errors.append("smtp.port = 465: port 465 is implicit TLS; set smtp.encryption to tls "
                      "or use port 587 (STARTTLS)")
    if s.smtp.username == s.acme.user:
        errors.append(f"smtp.username = {g.show(s.smtp.username)}: same as acme.user; "
                      "they are separate accounts")
    if s.paths.compose_dir == s.paths.data_dir:
        errors.append(f"paths.data_dir = {g.show(s.paths.data_dir)}: same as paths.compose_dir; "
                      "keep the data apart from the compose files")
    # e-mail addresses are case-insensitive: Me@home.lan and me@home.lan are one address
    emails = [e.lower() for e, _ in s.ott_pairs]
    dupes = sorted({e for e in emails if emails.count(e) > 1})
    if dupes:
        errors.append(f"ott: {(', '.join(dupes))} listed more than once (e-mail addresses "
                      "are compared ignoring case); one code per address")
    cors = [f"pitfalls.{n}" for n in pitfalls_mod.CORS_SWITCHES if getattr(s.pitfalls, n)]
    if len(cors) > 1:
        errors.append(f"{', '.join(cors)}: only one of the CORS switches may be on at a time "
                      "(each renders the article's set lines); turn the others off")
    if s.pitfalls.mail_cert_mismatch:
        if s.mta != "postfix":
            errors.append(f"pitfalls.mail_cert_mismatch: needs mta: postfix (mta is {s.mta}; "
                          "the sendmail templates have no pitfall switches)")
        if s.web_host == s.domain:
            errors.append(f"pitfalls.mail_cert_mismatch: web_host = {g.show(s.web_host)} is the "
                          "domain: its certificate would be the lab's one (which names the mail "
                          "host); give web_host its own name")
    p = s.pitfalls
    for name in ("tls_encrypt_main_cf", "sasl_wrong_dir"):
        if getattr(p, name) and s.mta != "postfix":
            errors.append(f"pitfalls.{name}: needs mta: postfix (mta is {s.mta}; the sendmail "
                          "templates have no pitfall switches)")
    if p.compose_missing_quote:
        others = [f"pitfalls.{n}" for n in pitfalls_mod.COMPOSE_SWITCHES if getattr(p, n)]
        if others:
            errors.append(f"pitfalls.compose_missing_quote, {', '.join(others)}: docker-compose "
                          "refuses the whole file with the missing quote, so the other "
                          "docker-compose.yml pitfall never shows; switch one at a time")
    if p.wellknown_in_location and p.mail_cert_mismatch:
        errors.append("pitfalls.wellknown_in_location, pitfalls.mail_cert_mismatch: the mail "
                      "certificate pitfall needs a certificate issued, which the well-known "
                      "pitfall makes fail; switch one at a time")
    if p.dashed_env_names and not s.ott:
        warnings.append("pitfalls.dashed_env_names is on but ott is empty: the dashed name "
                        "carries no code, so nothing shows (set ott, e.g. "
                        "--set 'ott=[\"me@home.lan,123456\"]')")
    return errors, warnings


def _bad_keys(errors: list[Any]) -> set[str]:
    """The settings keys (top level, or section.key) that failed pydantic's checks."""
    keys = set()
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        sectioned = len(loc) > 1 and _model_at(tuple(err["loc"][:1])) is not None
        keys.add(".".join(loc[:2] if sectioned else loc[:1]))
    return keys


def _without(data: dict, keys: set[str], defaults: dict) -> dict:
    """``data`` with each bad key put back to its default (or dropped when unknown)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in keys:
        parts = key.split(".")
        parent, dparent = out, defaults
        for part in parts[:-1]:
            if not isinstance(parent.get(part), dict):
                parent[part] = dict(dparent.get(part) or {})
            parent, dparent = parent[part], dparent.get(part) or {}
        if parts[-1] in dparent:
            parent[parts[-1]] = dparent[parts[-1]]
        else:
            parent.pop(parts[-1], None)
    return out


def _mentions(message: str, keys: set[str]) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message) for k in keys)


def validate(data: dict, defaults: dict) -> tuple[Settings, list[str]]:
    """Check ``data`` (types, grammars, then cross-key checks). Every problem is reported
    at once: with type errors present, the cross-key checks still run on the other keys."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors(include_url=False, include_context=False)
        problems = [_describe(e) for e in errs[:MAX_PROBLEMS]]
        hidden = len(errs) - len(problems)                   # counted, not described
        bad = _bad_keys(errs) if len(errs) <= 1000 else set()
        if bad:
            try:
                rest = Settings.model_validate(_without(data, bad, defaults))
            except ValidationError:
                rest = None
            if rest is not None:
                problems += [m for m in cross_checks(rest)[0] if not _mentions(m, bad)]
        raise SettingsError(capped(problems, hidden=hidden)) from None
    errors, warnings = cross_checks(settings)
    if errors:
        raise SettingsError(capped(errors))
    return settings, warnings


def local_settings_path(root: Path) -> Path:
    """The user's settings file: $ENTE_LAB_SETTINGS (which must exist) or
    <checkout>/settings.local.yaml (which may not)."""
    env = os.environ.get(ENV_SETTINGS_FILE)
    path = Path(env) if env else root / LOCAL_FILE_NAME
    if env and not (path.exists() or path.is_symlink()):
        raise SettingsError([f"{ENV_SETTINGS_FILE}={g.show(env)}: no such file; "
                             "unset it or point it at a settings YAML file"])
    return path


def rewrite_local(root: Path, edit: Callable[[str], tuple[str, Any]],
                  local_file: Path | None = None) -> tuple[Path, Any]:
    """Change the user's settings file (``local_file`` or ``local_settings_path``):
    ``edit`` maps its text (empty when there is none) to (new text, a result).
    The file is validated first, the new text too (as a task would load it; a
    SettingsError replaces nothing), then written atomically, its mode kept (0644 new).
    Returns (path, edit's result)."""
    import tempfile
    path = local_file if local_file is not None else local_settings_path(root)
    text = ""
    if path.exists():
        read_yaml(path)                        # refuses a bad file before any change
        text = path.read_text()
    new, result = edit(text)
    target = path.resolve() if path.is_symlink() else path
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".settings-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(new)
        load_settings(root, local_file=Path(tmp))
        os.chmod(tmp, (target.stat().st_mode & 0o777) if target.exists() else 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, result


def load_settings(root: Path, overrides: list[str] | tuple[str, ...] = (),
                  local_file: Path | None = None) -> tuple[Settings, list[str]]:
    """Build the settings for a checkout. Returns (settings, warnings)."""
    defaults = _yaml_file(DEFAULTS_FILE)
    data = defaults
    if local_file is None:
        local_file = local_settings_path(root)
    if local_file.exists() or local_file.is_symlink():
        data = _merge(data, _yaml_file(local_file))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return validate(data, defaults)
