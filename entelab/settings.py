"""Settings: one validated model built from defaults + local file + task options.

Flow: ``settings.defaults.yaml`` (shipped) <- ``settings.local.yaml`` (or the file
named by ENTE_LAB_SETTINGS) <- ``--set key.path=value`` options. The result is
checked twice: by pydantic (types, unknown keys, single values) and by
``cross_checks`` (collisions, overlaps, membership). Every problem is reported
at once as ``SettingsError``; nothing is written before validation passes.

The lab's settings are deliberately not part of Invoke's configuration (no
``INVOKE_*`` environment variable or invoke.yaml key can reach them).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from .errors import FIX_HINT, SettingsError  # noqa: F401 - SettingsError is part of this module's API

DEFAULTS_FILE = Path(__file__).with_name("settings.defaults.yaml")
LOCAL_FILE_NAME = "settings.local.yaml"
ENV_SETTINGS_FILE = "ENTE_LAB_SETTINGS"
DOCKER_DEFAULT_BRIDGE = ipaddress.ip_network("172.17.0.0/16")
# Ports the lab's own services hold inside the VM (Apache, Postfix, dnsmasq, pebble).
RESERVED_PORTS = {22: "ssh", 25: "smtp", 53: "dnsmasq", 80: "Apache http",
                  443: "Apache https", 587: "submission", 14000: "pebble ACME",
                  15000: "pebble management"}

HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
UNIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9.-]+)$")
OTT_ENTRY = re.compile(r"^(?P<email>[^,\s]+),(?P<code>\d{6})$")
IMAGE_REF = re.compile(
    r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)



def is_hostname(value: str) -> bool:
    if not value or len(value) > 253 or value.endswith("."):
        return False
    labels = value.split(".")
    return len(labels) >= 2 and all(HOST_LABEL.match(label) for label in labels)


def is_email(value: str) -> bool:
    m = EMAIL.match(value)
    return m is not None and is_hostname(m.group(1).lower())


# --------------------------------------------------------------------------- model

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=False)


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _unix_user(value: str) -> str:
    if not UNIX_NAME.match(value):
        raise ValueError("must be a system user name (lower case, digits, '_', '-')")
    return value


class Ports(_Section):
    museum: int
    web: int
    minio_api: int
    minio_console: int
    postgres: int

    _check = field_validator("*")(classmethod(lambda cls, v: _port(v)))


class Docker(_Section):
    network: str
    subnet: str
    ip_range: str
    gateway: str
    museum_ip: str

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", v):
            raise ValueError("must be a Docker network name (letters, digits, '_', '.', '-')")
        return v

    @field_validator("subnet", "ip_range")
    @classmethod
    def _net(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"must be an IPv4 network in CIDR form like 172.21.0.0/16 ({exc})") from None
        if net.version != 4:
            raise ValueError("must be an IPv4 network in CIDR form like 172.21.0.0/16")
        return v

    @field_validator("gateway", "museum_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("must be an IPv4 address like 172.21.0.5") from None
        return v


class Paths(_Section):
    compose_dir: str
    data_dir: str

    @field_validator("*")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or "/../" in v + "/" or "//" in v:
            raise ValueError("must be an absolute, normalised path like /opt/dockerfiles/ente")
        return v.rstrip("/") or "/"


class Db(_Section):
    name: str
    user: str

    @field_validator("*")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", v):
            raise ValueError("must be a PostgreSQL identifier (lower case, digits, '_')")
        return v


class Smtp(_Section):
    port: int
    username: str
    email: str
    sender_name: str
    encryption: Literal["", "tls", "ssl"]

    _p = field_validator("port")(classmethod(lambda cls, v: _port(v)))

    _u = field_validator("username")(classmethod(lambda cls, v: _unix_user(v)))

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if v and not is_email(v):
            raise ValueError("must be an e-mail address like verification@darkstar.lan (or empty)")
        return v


class Images(_Section):
    museum: str
    postgres: str
    minio: str
    mc: str
    socat: str
    auth_web: str
    cli: str

    @field_validator("*")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not IMAGE_REF.match(v):
            raise ValueError("must be an image reference like ghcr.io/ente/server:latest")
        return v


class Acme(_Section):
    user: str
    ca: str
    contact: str

    _u = field_validator("user")(classmethod(lambda cls, v: _unix_user(v)))

    @field_validator("ca")
    @classmethod
    def _ca(cls, v: str) -> str:
        if not re.match(r"^https://[^/\s]+/\S*$", v):
            raise ValueError("must be an https:// ACME directory URL")
        return v

    @field_validator("contact")
    @classmethod
    def _contact(cls, v: str) -> str:
        if v and not is_email(v):
            raise ValueError("must be an e-mail address (or empty)")
        return v


class Vm(_Section):
    hostname: str
    memory: int
    cpus: int
    accel: Literal["auto", "kvm", "qemu"]
    provider: Literal["libvirt", "virtualbox"]
    management_network: str

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not HOST_LABEL.match(v):
            raise ValueError("must be a single host name label like darkstar")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int) -> int:
        if v < 2048:
            raise ValueError("must be at least 2048 (MiB): Docker, PostgreSQL and Postfix share the VM")
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: int) -> int:
        cores = os.cpu_count() or 1
        if not 1 <= v <= cores:
            raise ValueError(f"must be between 1 and this host's {cores} cores")
        return v

    _net = field_validator("management_network")(Docker._net.__func__)  # type: ignore[attr-defined]


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
    ott: list[str] = Field(default_factory=list)
    admins: list[int] = Field(default_factory=list)
    images: Images
    acme: Acme
    vm: Vm

    @field_validator("domain", "api_host", "web_host", "mail_host")
    @classmethod
    def _host(cls, v: str, info) -> str:
        if info.field_name != "domain" and v == "":
            return v
        if v != v.lower() or not is_hostname(v):
            raise ValueError("must be a lower-case DNS name with at least two labels, like darkstar.lan")
        return v

    @field_validator("ott")
    @classmethod
    def _ott(cls, v: list[str]) -> list[str]:
        for i, entry in enumerate(v):
            m = OTT_ENTRY.match(entry)
            if not m or not is_email(m.group("email")):
                raise ValueError(f"entry {i} ({entry!r}) must be 'email,6 digits' like 'me@home.lan,305719'")
        return v

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[int]) -> list[int]:
        for i, uid in enumerate(v):
            if uid <= 0:
                raise ValueError(f"entry {i} ({uid}) must be a positive Ente account id")
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

def _yaml_file(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError([f"{path}: not valid YAML ({exc})"]) from None
    if not isinstance(data, dict):
        raise SettingsError([f"{path}: must be a mapping of settings, got {type(data).__name__}"])
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``vm.memory=6144`` -> {"vm": {"memory": 6144}} (value parsed as YAML)."""
    if "=" not in text:
        raise SettingsError([f"--set {text!r}: must be KEY=VALUE like vm.memory=6144"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    out: Any = value
    for part in reversed(key.strip().split(".")):
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
    key = ".".join(str(p) for p in loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{key}: unknown setting{hint} (known here: {', '.join(known)})"
    if err["type"] == "missing":
        return f"{key}: required setting is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif err["type"].endswith("_type") or err["type"] in ("int_parsing",):
        msg = f"wrong type: {msg.lower()}"
    return f"{key} = {value!r}: {msg}"


def cross_checks(s: Settings) -> tuple[list[str], list[str]]:
    """Checks across keys. Returns (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    d = s.docker
    subnet = ipaddress.IPv4Network(d.subnet)
    ip_range = ipaddress.IPv4Network(d.ip_range)
    gateway = ipaddress.ip_address(d.gateway)
    museum = ipaddress.ip_address(d.museum_ip)
    mgmt = ipaddress.ip_network(s.vm.management_network)

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

    # host names: distinct
    names = {"domain": s.domain, "api_host": s.api_host, "web_host": s.web_host,
             "mail_host": s.mail_host}
    for a, b in (("api_host", "web_host"), ("api_host", "mail_host"), ("web_host", "mail_host")):
        if names[a] == names[b]:
            errors.append(f"{b} = {names[b]!r}: same as {a}; each service needs its own name")
    if s.smtp.encryption == "" and s.smtp.port == 465:
        errors.append("smtp.port = 465: port 465 is implicit TLS; set smtp.encryption to tls "
                      "or use port 587 (STARTTLS)")
    if s.smtp.username == s.acme.user:
        errors.append(f"smtp.username = {s.smtp.username!r}: same as acme.user; they are separate accounts")
    emails = [e for e, _ in s.ott_pairs]
    dupes = sorted({e for e in emails if emails.count(e) > 1})
    if dupes:
        errors.append(f"ott: {', '.join(dupes)} listed more than once; one code per address")
    return errors, warnings


def load_settings(root: Path, overrides: list[str] | tuple[str, ...] = (),
                  local_file: Path | None = None) -> tuple[Settings, list[str]]:
    """Build the settings for a checkout. Returns (settings, warnings)."""
    data = _yaml_file(DEFAULTS_FILE)
    if local_file is None:
        env = os.environ.get(ENV_SETTINGS_FILE)
        local_file = Path(env) if env else root / LOCAL_FILE_NAME
        if env and not local_file.is_file():
            raise SettingsError([f"{ENV_SETTINGS_FILE}={env}: no such file; "
                                 "unset it or point it at a settings YAML file"])
    if local_file.is_file():
        data = _merge(data, _yaml_file(local_file))
    for text in overrides:
        data = _merge(data, parse_override(text))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError([_describe(e) for e in exc.errors()]) from None
    errors, warnings = cross_checks(settings)
    if errors:
        raise SettingsError(errors)
    return settings, warnings
