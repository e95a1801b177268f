"""Secrets: generated once per lab, kept in a git-ignored 0600 file, never printed.

Generated the way upstream Museum does (server/tools/gen-random-keys):
key.encryption = 32 random bytes, base64; key.hash = 64 random bytes, base64;
jwt.secret = 32 random bytes, URL-safe base64. The DB password, the MinIO
key/secret and the SASL password of the ``verification`` user are random too.
The article's example values are refused.

Each value is checked by its grammar (entelab/grammar.py: upstream's three keys by
their exact base64 shape, the others by a character set that is safe in .env,
YAML and shell alike). The file itself is read defensively (a regular UTF-8 file
of at most 64 KiB, no YAML aliases); a file readable by others is repaired to
0600, with a warning saying so. The SASL user's password hash is SHA-512 crypt
computed by ``openssl passwd -6`` (stable for the same salt and password).
"""

from __future__ import annotations

import base64
import functools
import os
import secrets as _rand
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from . import grammar, hostrun
from .errors import SettingsError
from .settings import capped, read_yaml

SECRETS_FIX = "delete the line and re-render to generate it, or run lab.render --rotate-secrets"

# The example values printed in the article: never acceptable.
ARTICLE_EXAMPLES = {
    "yvmG/RnzKrbCb9L3mgsmoxXr9H7i2Z4qlbT0mL3ln4w=",
    "JDYkOVlqSi9rLzBEaDNGRTFqRyQuQTJjNGF0cXoyajA3MklWTjc1cDBSaWxaTmh0VUViemlGRURFUFZqOUlNCg==",
    "wRUs9H5IXCKda9gwcLkQ99g73NVUT9pkE719ZW/eMZw=",
    "9E8z2nG3wURGC0R51V5LN7/pVapwsSvJJ2fASUUPqG8=",
    "AeGnCRWTrEZVk8VjroxVqp7IoHQ/fNn4wPL7PilZ+Hg=",
    "wdZPtr0rEJbFxr4GsGMB6mYojKahA3nNejIryeawloc=",
    "thepassword",
}


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def _b64url(n: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(n)).decode()


def _alnum(n: int) -> str:
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(_rand.choice(alphabet) for _ in range(n))


GENERATORS = {
    "key_encryption": lambda: _b64(32),
    "key_hash": lambda: _b64(64),
    "jwt_secret": lambda: _b64url(32),
    "db_password": lambda: _alnum(32),
    "minio_key": lambda: _alnum(20),
    "minio_secret": lambda: _alnum(40),
    "sasl_password": lambda: _alnum(24),
    "sasl_salt": lambda: _alnum(16),
}


@dataclass(frozen=True)
class Secrets:
    key_encryption: str
    key_hash: str
    jwt_secret: str
    db_password: str
    minio_key: str
    minio_secret: str
    sasl_password: str
    sasl_salt: str

    def __repr__(self) -> str:  # never leak through logs or tracebacks
        return "Secrets(<hidden>)"

    __str__ = __repr__

    @property
    def sasl_password_hash(self) -> str:
        """SHA-512 crypt of the SASL user's password, stable across renders."""
        return sha512_crypt(self.sasl_password, self.sasl_salt)

    def values(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


@functools.lru_cache(maxsize=32)
def sha512_crypt(password: str, salt: str) -> str:
    """``$6$salt$hash`` (crypt(3) SHA-512, 5000 rounds) by ``openssl passwd -6``.

    Both values are grammar-checked first (no newline can reach openssl's stdin,
    the salt is of crypt's alphabet), so the result is stable across renders.
    """
    for name, value in (("sasl_password", password), ("sasl_salt", salt)):
        if grammar.secret_problem(name, value):
            raise SettingsError([f"secret {name!r}: {grammar.secret_problem(name, value)}; {SECRETS_FIX}"])
    return openssl_sha512_crypt(password, salt)


def openssl_sha512_crypt(password: str, salt: str) -> str:
    """``openssl passwd -6 -salt SALT -stdin`` (the password on stdin, never in argv)."""
    res = hostrun.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password + "\n",
                      hint="openssl computes the SASL user's password hash; install openssl")
    out = res.stdout.strip()
    if not out.startswith(f"$6${salt}$"):
        raise SettingsError([f"openssl passwd -6 gave an unexpected hash form {grammar.show(out[:12])}"])
    return out


def _check(data: dict, path: Path) -> None:
    problems = []
    where = str(path)
    for name in GENERATORS:
        value = data.get(name)
        problem = grammar.secret_problem(name, value)
        if isinstance(value, str) and value in ARTICLE_EXAMPLES:
            problems.append(f"{where}: secret {name!r} is the article's published example value; "
                            "delete the line and re-render, or run lab.render --rotate-secrets")
        elif problem:
            problems.append(f"{where}: secret {name!r} {problem}; {SECRETS_FIX}")
    unknown = sorted(set(data) - set(GENERATORS), key=str)
    if unknown:
        names = ", ".join(grammar.show_key(str(k)) for k in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        problems.append(f"{where}: unknown secret(s) {names}{more}; known: {', '.join(GENERATORS)}")
    if problems:
        raise SettingsError(capped(problems))


def read(path: Path) -> dict:
    """The secrets file's values (missing or empty ones left out). Refuses a bad file."""
    fix = "fix or delete it (deleting it generates new secrets)"
    data = read_yaml(path, "secrets", fix=fix)
    where = str(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError([f"{where}: must be a mapping name: value, got {type(data).__name__}; {fix}"])
    present = {k: v for k, v in data.items() if v not in (None, "")}
    _check({**{k: GENERATORS[k]() for k in GENERATORS if k not in present}, **present}, path)
    return present


def mode_warning(path: Path) -> str | None:
    """If the secrets file is readable by others: repair it to 0600 and say so."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode == 0o600:
        return None
    path.chmod(0o600)
    return (f"{str(path)} had mode {mode:04o} (its secrets readable by others); repaired to 0600. "
            "If others could read it, rotate them: lab.render --rotate-secrets")


def load_or_create(path: Path, rotate: bool = False, dry_run: bool = False) -> tuple[Secrets, bool]:
    """Return (secrets, changed). Missing values are generated; all when rotate.

    The file is written 0600 (created with that mode; never world-readable).
    With dry_run nothing is written (used to validate before any write); the
    caller then writes (``write``) and repairs the mode (``mode_warning``).
    """
    data: dict = {}
    if (path.exists() or path.is_symlink()) and not rotate:
        data = read(path)
    changed = False
    for name, gen in GENERATORS.items():
        if name not in data:
            data[name] = gen()
            changed = True
    secrets = Secrets(**{k: data[k] for k in GENERATORS})
    if changed and not dry_run:
        write(path, secrets)
    elif not dry_run:
        warning = mode_warning(path)
        if warning:
            from .progress import warn
            warn(warning)
    return secrets, changed


def write(path: Path, secrets: Secrets) -> None:
    body = ("# ente-lab secrets: generated, git-ignored, mode 0600. Never share or commit.\n"
            "# Delete a line (or run lab.render --rotate-secrets) to generate a new value.\n"
            + yaml.safe_dump(asdict(secrets), sort_keys=False))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
    os.replace(tmp, path)
    path.chmod(0o600)


def redact(text: str, secrets: Secrets) -> str:
    """Replace every secret value in text (for logs and error messages)."""
    for value in secrets.values():
        if value:
            text = text.replace(value, "<secret>")
    return text
