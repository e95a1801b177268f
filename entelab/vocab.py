"""The converge vocabulary, shared by the host (plan) and the guest (agent).

Standard library only: converge ships this module to the VM beside the agent.
Every list the lab keeps about services is defined here, once:

- ``SERVICES``: the guest's services in start order, each with its rc.d script;
  rc.M, setup.sh and the status/smoke checks read it (rc.M and setup.sh from
  ``/etc/ente-lab/services``, which is generated from it);
- ``Action``, ``Validator``, ``Reload``: the operation kinds, staged-copy checks
  and reload targets a plan may name; the agent refuses anything else;
- ``RELOAD_ORDER``: the order reloads run in after an apply;
- the managed-block markers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum, StrEnum
from typing import TypeVar

E = TypeVar("E", bound=Enum)

BLOCK_BEGIN = "# BEGIN ente-lab managed block (do not edit inside; lab.converge rewrites it)"
BLOCK_END = "# END ente-lab managed block"
# what the agent searches for (the begin marker without its note)
BLOCK_BEGIN_PREFIX = "# BEGIN ente-lab managed block"

SERVICES_FILE = "/etc/ente-lab/services"
# The catch-all mailbox: every address @<domain> is delivered to this local user
# (templates/postfix/catchall.regexp.j2), in mbox format at CATCHALL_MBOX.
CATCHALL_USER = "labmail"
CATCHALL_MBOX = f"/var/mail/{CATCHALL_USER}"
CATCHALL_MAP = "/etc/postfix/ente-lab-catchall.regexp"
STATE_FILE = "/var/lib/ente-lab/last-converge.json"


@dataclass(frozen=True)
class Service:
    name: str            # as rc.M and lab.status name it
    rc_script: str       # /etc/rc.d/<rc_script>
    daemon: str          # the process that must run while the service is up
    # started by rc.M in the background of the boot's ACME refresh (they take no
    # part in it): a boot then costs the longer of the two, not both
    background: bool = False

    @property
    def services_line(self) -> str:
        """Its line in SERVICES_FILE: the name, then 'background' when it is."""
        return f"{self.name} background" if self.background else self.name


# The guest's services, in the order rc.M starts them (stopped in reverse).
SERVICES: tuple[Service, ...] = (
    Service("dnsmasq", "rc.dnsmasq", "dnsmasq"),
    Service("saslauthd", "rc.saslauthd", "saslauthd"),
    Service("postfix", "rc.postfix", "master"),
    Service("pebble", "rc.pebble", "pebble"),
    Service("httpd", "rc.httpd", "apache2"),
    Service("docker", "rc.docker", "dockerd", background=True),
    Service("ente", "rc.ente", "containerd-shim-runc-v2", background=True),
)
SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


class Action(StrEnum):
    """What converge does to one path."""

    WRITE = "write"                # whole file: content, mode, owner
    MERGE_BLOCK = "merge-block"    # the lab's block inside a shared file
    LINK = "link"                  # symlink
    MKDIR = "mkdir"                # directory (with its parents)
    ATTRS = "attrs"                # content right, mode/owner drifted
    REMOVE = "remove"              # a file or link that must not exist (never a directory)


class Validator(StrEnum):
    """How the agent checks a staged copy before installing it."""

    APACHE = "apache"      # apache2 -t on a staged copy of /etc/apache2
    POSTFIX = "postfix"    # postfix check on a staged copy of /etc/postfix
    SUDOERS = "sudoers"    # visudo -cf
    DNSMASQ = "dnsmasq"    # dnsmasq --test
    SHELL = "shell"        # sh -n
    COMPOSE = "compose"    # docker-compose config -q on a staged project
    NONE = "none"


class Reload(StrEnum):
    """What has to take a changed file into account."""

    USERS = "users"                  # apply /etc/ente-lab/users.conf
    SASLAUTHD = "saslauthd"
    DNSMASQ = "dnsmasq"
    POSTFIX = "postfix"
    SENDMAIL = "sendmail"
    HTTPD = "httpd"
    DOCKER_NETWORK = "docker-network"
    ENTE_STACK = "ente-stack"
    NONE = "none"


RELOAD_ORDER: tuple[Reload, ...] = (
    Reload.USERS, Reload.SASLAUTHD, Reload.DNSMASQ, Reload.POSTFIX, Reload.SENDMAIL,
    Reload.HTTPD, Reload.DOCKER_NETWORK, Reload.ENTE_STACK,
)
# reload -> rc.d script that reloads it (reload when running, else start);
# rc.ente's start/reload makes the Docker network too
RC_SCRIPT: dict[Reload, str] = {
    Reload.HTTPD: "rc.httpd", Reload.POSTFIX: "rc.postfix", Reload.SASLAUTHD: "rc.saslauthd",
    Reload.DNSMASQ: "rc.dnsmasq", Reload.SENDMAIL: "rc.sendmail",
    Reload.DOCKER_NETWORK: "rc.ente", Reload.ENTE_STACK: "rc.ente",
}
# reloads with no implementation yet: reported as skipped, never as reloaded
NOT_IMPLEMENTED: dict[Reload, str] = {}
# Stack files the containers bind-mount (docker-compose cannot see a change to them):
# file name -> the compose services to re-create when it changed (rc.ente reload NAME...).
STACK_BIND_MOUNTS: dict[str, tuple[str, ...]] = {
    "museum.yaml": ("ente-museum",),
    "cli-config.yaml": ("ente-cli",),
    "minio-provision.sh": ("ente-minio-provision",),
}
# A reload whose rc script checks the configuration first, as the agent's validator did
# on a staged copy of the same files: the variable that tells the script it was done
# (rc.postfix: 'postfix check', 4-5 s under TCG, once instead of twice a converge).
RELOAD_CHECKED: dict[Reload, tuple[Validator, str]] = {
    Reload.POSTFIX: (Validator.POSTFIX, "POSTFIX_CHECKED"),
}

# reloads done only when the service runs (a stopped one is not started by converge)
ONLY_WHEN_RUNNING: dict[Reload, str] = {
    Reload.ENTE_STACK: "the stack is not running: lab.up (or /etc/rc.d/rc.ente start) starts it",
    Reload.DOCKER_NETWORK: "the stack is not running: rc.ente start creates the network",
}


class UnknownKind(ValueError):
    """A plan named an action, validator or reload this vocabulary does not have."""


def _enum(kind: type[E], value: object, what: str) -> E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(str(m.value) for m in kind)
        raise UnknownKind(f"unknown {what} {value!r}; known: {known}") from None


@dataclass(frozen=True)
class Op:
    """One typed operation of a converge plan (what travels in plan.json)."""

    path: str
    action: Action
    mode: str
    owner: str
    group: str
    reload: Reload = Reload.NONE
    validate: Validator = Validator.NONE
    target: str = ""        # links
    top: bool = False       # merge-block: put the block at the top of the file

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(action=self.action.value, reload=self.reload.value, validate=self.validate.value)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Op:
        """Parse one operation; raises UnknownKind for a kind not in the vocabulary."""
        return cls(path=str(d["path"]), action=_enum(Action, d.get("action"), "action"),
                   mode=str(d.get("mode", "0644")), owner=str(d.get("owner", "root")),
                   group=str(d.get("group", "root")),
                   reload=_enum(Reload, d.get("reload", "none"), "reload"),
                   validate=_enum(Validator, d.get("validate", "none"), "validator"),
                   target=str(d.get("target", "")), top=bool(d.get("top", False)))
