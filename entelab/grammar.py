"""Grammars: what a value of each kind may look like, matched whole.

One function per kind of value. Each returns the value (possibly normalised)
or raises ``ValueError`` whose text says what is allowed; pydantic turns that
into the settings error line. Every pattern is matched with ``re.fullmatch``
and ASCII semantics (``re.ASCII``): a trailing newline or a Unicode digit never
passes. The grammars are deliberately narrow: a value that passes is safe, as
is, in every file format it reaches, including those with no escaping at all
(Apache, Postfix, dnsmasq, sudoers, /etc/hosts); see docs/grammars.md.

``show()`` is how a user's value appears in a message: ``repr()``, shortened,
(the console escapes markup when it prints a message, so ``[red]`` or ``[/b]`` show literally).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

A = re.ASCII

# ------------------------------------------------------------------ messages
SHOW_MAX = 60


def show(value: Any) -> str:
    """A value as it appears in a message: repr, shortened, console-markup safe."""
    text = repr(value)
    if len(text) > SHOW_MAX:
        text = f"{text[:SHOW_MAX - 15]}...({len(text)} chars)"
    return text


def show_key(key: str) -> str:
    """A settings key in a message: bare when it looks like one, else like a value."""
    return key if re.fullmatch(r"[A-Za-z0-9_.\-]{1,80}", key, A) else show(key)


# ------------------------------------------------------------------ DNS names
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", A)


def _all_digits(label: str) -> bool:
    return label.isascii() and label.isdigit()


def host_label(value: str) -> str:
    """One lower-case DNS label (RFC 1123): 1-63 of a-z 0-9 '-', no '-' at either end,
    not all digits (Postfix and others take an all-numeric name for an address)."""
    if not isinstance(value, str) or not LABEL.fullmatch(value) or _all_digits(value):
        raise ValueError("must be a single host name label like darkstar "
                         "(1-63 of a-z 0-9 '-', not starting or ending with '-', not all digits)")
    return value


def is_dns_name(value: str, min_labels: int = 2) -> bool:
    """Labels as ``host_label`` (digits allowed), the last one (the top-level domain)
    not all digits: '1.2.3.4' or '0.0' look like addresses and Postfix refuses them."""
    if not isinstance(value, str) or not 1 <= len(value) <= 253:
        return False
    labels = value.split(".")
    return (len(labels) >= min_labels and all(LABEL.fullmatch(label) for label in labels)
            and not _all_digits(labels[-1]))


def dns_name(value: str) -> str:
    """A lower-case DNS name of at least two labels, at most 253 characters."""
    if not is_dns_name(value):
        raise ValueError("must be a lower-case DNS name with at least two labels, like darkstar.lan "
                         "(labels of a-z 0-9 '-', 1-63 characters each, 253 in all; the last "
                         "label not all digits)")
    return value


def docker_network(value: str) -> str:
    """The Docker network's name: also a DNS domain (ente-museum.<network>) in the lab."""
    if not is_dns_name(value, min_labels=1) or len(value) > 63:
        raise ValueError("must be a lower-case DNS name like ente.lan (a-z 0-9 '-' '.', "
                         "at most 63 characters, the last label not all digits): it is also "
                         "the containers' DNS domain")
    return value


# ------------------------------------------------------------------ e-mail
# A documented subset of RFC 5321 addresses: a dot-atom local part of
# letters, digits and . _ % + - (no leading, trailing or double dot, at most
# 64 characters) @ a DNS name of two or more labels (compared case-insensitively).
EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*", A)


def is_email(value: str) -> bool:
    if not isinstance(value, str) or value.count("@") != 1 or len(value) > 254:
        return False
    local, domain = value.split("@")
    return (len(local) <= 64 and bool(EMAIL_LOCAL.fullmatch(local))
            and is_dns_name(domain.lower()))


def email(value: str) -> str:
    if not is_email(value):
        raise ValueError("must be an e-mail address like verification@darkstar.lan "
                         "(letters, digits and . _ % + - before the @, a DNS name after it)")
    return value


# ------------------------------------------------------------------ paths
PATH = re.compile(r"(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,16}", A)
# Directories of a Debian system the lab must never take over as a whole.
SYSTEM_DIRS = frozenset({
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/include",
    "/usr/share", "/usr/src", "/usr/local", "/usr/local/bin", "/usr/local/sbin",
    "/usr/local/lib", "/usr/local/share", "/usr/local/etc", "/usr/local/include",
    "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail", "/var/tmp", "/var/run",
    "/var/backups", "/var/local", "/var/opt", "/var/lib/docker", "/etc/apache2", "/etc/postfix",
    "/etc/ssl", "/etc/sudoers.d", "/etc/dehydrated", "/etc/ente-lab", "/etc/systemd",
    "/etc/rc.d", "/etc/default", "/etc/sasl2", "/home/vagrant",
})
# Trees whose content belongs to the kernel or the boot: nothing of the lab goes there.
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/run", "/tmp", "/etc")


def abs_path(value: str) -> str:
    """An absolute directory path of safe characters, normalised, not a system directory.

    Components: a letter, digit or '_' then letters, digits, '.', '_', '-'
    (so no '..', no ':' that would split a compose volume, no spaces, no
    newline). One trailing '/' is dropped.
    """
    if isinstance(value, str) and len(value) > 1 and value.endswith("/"):
        value = value[:-1]
    if not isinstance(value, str) or len(value) > 200 or not PATH.fullmatch(value):
        raise ValueError("must be an absolute, normalised path like /opt/dockerfiles/ente "
                         "(components of letters, digits, '.', '_', '-'; no '..', ':', spaces)")
    if value in SYSTEM_DIRS or any(value == t or value.startswith(t + "/") for t in SYSTEM_TREES):
        raise ValueError("is a system directory (or inside /etc, /proc, /sys, /dev, /boot, /run, "
                         "/tmp); choose a directory of its own like /opt/dockerfiles/ente")
    return value


def archive_file(value: str) -> str:
    """A host file path for a ``docker save`` archive: absolute, safe characters,
    ending in .tar, .tar.gz or .tgz (what ``docker load`` reads)."""
    if not isinstance(value, str) or len(value) > 300 or not PATH.fullmatch(value) \
            or not re.search(r"\.(tar|tar\.gz|tgz)\Z", value):
        raise ValueError("must be an absolute path to a 'docker save' archive like "
                         "/srv/ente-images.tar (letters, digits, '.', '_', '-'; ending in "
                         ".tar, .tar.gz or .tgz)")
    return value


# ------------------------------------------------------------------ images
# The OCI distribution reference grammar (distribution/reference, regexp.go),
# ASCII only, without IPv6 hosts:
#   reference := name [ ":" tag ] [ "@" digest ]
#   name      := [domain '/'] remote-name; domain := host [':' port]
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*)(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REF = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", A)


def image_ref(value: str) -> str:
    m = IMAGE_REF.fullmatch(value) if isinstance(value, str) and len(value) <= 400 else None
    domain = m.group("domain") if m else None
    if (m and domain and not ("." in domain or ":" in domain or domain == "localhost")
            and not re.fullmatch(_PATH_COMPONENT, domain, A)):
        m = None        # 'Foo/bar': without '.', ':' or localhost 'Foo' is a path component
    if not m or len(m.group("name")) > 255:
        raise ValueError("must be an image reference like ghcr.io/ente/server:latest "
                         "(the OCI grammar: lower-case repository, optional :tag and @digest)")
    return value


# ------------------------------------------------------------------ URL
URL = re.compile(r"https://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
                 r"(?P<path>/[A-Za-z0-9._~/-]*)?", A)


def https_url(value: str) -> str:
    """An https:// URL: host (DNS name, 'localhost' or IPv4), optional port and path of
    letters, digits and . _ ~ / -; no query, no credentials."""
    m = URL.fullmatch(value) if isinstance(value, str) and len(value) <= 200 else None
    ok = bool(m)
    if m and ok:
        host = m.group("host")
        ok = host == "localhost" or is_dns_name(host.lower()) or _is_ipv4(host)
        if m.group("port") is not None:
            ok = ok and 1 <= int(m.group("port")) <= 65535
    if not ok:
        raise ValueError("must be an https:// ACME directory URL like https://localhost:14000/dir "
                         "(host, optional port, path of letters, digits, '.', '_', '~', '/', '-')")
    return value


# ------------------------------------------------------------------ accounts
ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}", A)
# Users and groups of the pristine box (Debian 12 base-passwd + the packages
# entelab/box.py installs + the Vagrant user), which converge must never take
# over, and names with a special meaning. The lab's own accounts
# (dehydrated_user, verification) are not in it.
RESERVED_ACCOUNTS = frozenset({
    # base-passwd users
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "_apt",
    # base-passwd groups
    "adm", "tty", "disk", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo",
    "audio", "dip", "operator", "src", "shadow", "utmp", "video", "plugdev", "staff", "users",
    "nogroup",
    # packages of the box
    "systemd-network", "systemd-timesync", "systemd-resolve", "systemd-journal",
    "systemd-coredump", "input", "sgx", "kvm", "render", "netdev", "messagebus", "sshd",
    "_ssh", "crontab", "postfix", "postdrop", "sasl", "ssl-cert", "dnsmasq", "docker",
    "dehydrated", "pebble", "tss", "polkitd", "statd", "_chrony", "uuidd", "tcpdump",
    # the lab's SSH user and other special names
    "vagrant", "wheel", "admin", "administrator", "toor", "halt", "shutdown", "ftp",
    # the lab's catch-all mailbox (vocab.CATCHALL_USER)
    "labmail",
})


def account(value: str) -> str:
    """A new system account (user and group) name: lower case, not one the box already has."""
    if not isinstance(value, str) or not ACCOUNT.fullmatch(value):
        raise ValueError("must be a system user name like verification (a-z, 0-9, '_', '-'; "
                         "starting with a letter or '_'; at most 32 characters)")
    if value in RESERVED_ACCOUNTS:
        raise ValueError("is an account or group the box already has (root, vagrant and system "
                         "accounts are reserved: converge would change it); choose a name of "
                         "the lab's own like verification")
    return value


# ------------------------------------------------------------------ numbers and networks
INT64_MAX = 2**63 - 1


def port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


MESSAGE_SIZE_MIN = 65536           # an OTT mail is a few KiB; below this mail breaks
MESSAGE_SIZE_MAX = 2**31 - 1       # Postfix reads it as a (signed) long; keep it portable


def message_size(value: int) -> int:
    """Postfix ``message_size_limit`` in bytes: 0 (no limit) or 65536 .. 2147483647."""
    if value != 0 and not MESSAGE_SIZE_MIN <= value <= MESSAGE_SIZE_MAX:
        raise ValueError(f"must be 0 (no limit) or a size in bytes between {MESSAGE_SIZE_MIN} "
                         f"and {MESSAGE_SIZE_MAX}")
    return value


def dump_count(value: int) -> int:
    """How many database dumps lab.upgrade keeps: 1 .. 50."""
    if not 1 <= value <= 50:
        raise ValueError("must be between 1 and 50 (dumps kept on the host)")
    return value


def _is_ipv4(value: str) -> bool:
    if not re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", value, A):
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def ipv4(value: str) -> str:
    if not isinstance(value, str) or not _is_ipv4(value):
        raise ValueError("must be an IPv4 address like 172.21.0.5")
    return value


def cidr(value: str) -> str:
    """An IPv4 network in CIDR form with no host bits set, like 172.21.0.0/16."""
    ok = isinstance(value, str) and bool(re.fullmatch(r"[0-9.]{7,15}/[0-9]{1,2}", value, A))
    detail = ""
    if ok:
        try:
            ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            ok, detail = False, f" ({str(exc)})"
    if not ok:
        raise ValueError(f"must be an IPv4 network in CIDR form like 172.21.0.0/16{detail}")
    return value


def pg_identifier(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value, A):
        raise ValueError("must be a PostgreSQL identifier (lower case, digits, '_'; "
                         "at most 63 characters)")
    return value


SENDER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._'-]{0,62}[A-Za-z0-9.])?", A)


def sender_name(value: str) -> str:
    """The From display name: letters, digits, spaces and . _ ' - (no quotes, no newline:
    it goes into a mail header)."""
    if not isinstance(value, str) or not SENDER_NAME.fullmatch(value):
        raise ValueError("must be a short display name like Ente Auth (1-64 of letters, digits, "
                         "spaces and . _ ' -)")
    return value


OTT_CODE = re.compile(r"[0-9]{6}", A)


def ott_entry(value: str) -> tuple[str, str]:
    """'email,6 digits' (ASCII digits) -> (email, code)."""
    email_part, sep, code = value.partition(",")
    if not sep or not is_email(email_part) or not OTT_CODE.fullmatch(code):
        raise ValueError("must be 'email,6 digits' like 'me@home.lan,305719'")
    return email_part, code


# ------------------------------------------------------------------ secrets
def _b64_exact(value: str, nbytes: int, urlsafe: bool) -> bool:
    chars = "A-Za-z0-9_-" if urlsafe else "A-Za-z0-9+/"
    pad = (3 - nbytes % 3) % 3
    length = 4 * -(-nbytes // 3)
    if not re.fullmatch(f"[{chars}]{{{length - pad}}}={{{pad}}}", value, A):
        return False
    try:
        raw = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(value)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == nbytes


SECRET_CHARS = re.compile(r"[A-Za-z0-9._~-]{16,128}", A)

# name -> (check, what is allowed)
SECRET_GRAMMARS: dict[str, tuple[Any, str]] = {
    "key_encryption": (lambda v: _b64_exact(v, 32, urlsafe=False),
                       "base64 of 32 bytes (44 characters ending in '='), as upstream generates"),
    "key_hash": (lambda v: _b64_exact(v, 64, urlsafe=False),
                 "base64 of 64 bytes (88 characters ending in '=='), as upstream generates"),
    "jwt_secret": (lambda v: _b64_exact(v, 32, urlsafe=True),
                   "URL-safe base64 of 32 bytes (44 characters ending in '='), as upstream generates"),
    "db_password": (SECRET_CHARS.fullmatch, "16-128 of letters, digits, '.', '_', '~', '-'"),
    "minio_key": (SECRET_CHARS.fullmatch, "16-128 of letters, digits, '.', '_', '~', '-'"),
    "minio_secret": (SECRET_CHARS.fullmatch, "16-128 of letters, digits, '.', '_', '~', '-'"),
    "sasl_password": (SECRET_CHARS.fullmatch, "16-128 of letters, digits, '.', '_', '~', '-'"),
    "sasl_salt": (re.compile(r"[A-Za-z0-9./]{8,16}", A).fullmatch,
                  "8-16 of letters, digits, '.', '/' (a crypt(3) salt)"),
}


def secret_problem(name: str, value: Any) -> str | None:
    """What is wrong with one secret (never showing its value), or None."""
    check, allowed = SECRET_GRAMMARS[name]
    if not isinstance(value, str):
        return f"must be a string of {allowed}"
    if not check(value):
        return f"must be {allowed}"
    return None
