"""Secrets: generated once per lab, kept in a git-ignored 0600 file, never printed.

Generated the way upstream Museum does (server/tools/gen-random-keys):
key.encryption = 32 random bytes, base64; key.hash = 64 random bytes, base64;
jwt.secret = 32 random bytes, URL-safe base64. The DB password, the MinIO
key/secret and the SASL password of the ``verification`` user are random too.
The article's example values are refused.
"""

from __future__ import annotations

import base64
import os
import secrets as _rand
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml
from passlib.hash import sha512_crypt

from .settings import SettingsError

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
        return sha512_crypt.using(salt=self.sasl_salt, rounds=5000).hash(self.sasl_password)

    def values(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


def _check(data: dict, path: Path) -> None:
    problems = []
    for name in GENERATORS:
        value = data.get(name)
        if not isinstance(value, str) or len(value) < 8:
            problems.append(f"{path}: secret {name!r} is missing or shorter than 8 characters; "
                            "delete the line and re-render to generate it")
        elif value in ARTICLE_EXAMPLES:
            problems.append(f"{path}: secret {name!r} is the article's published example value; "
                            "delete the line and re-render, or run lab.render --rotate-secrets")
    unknown = sorted(set(data) - set(GENERATORS))
    if unknown:
        problems.append(f"{path}: unknown secret(s) {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    if problems:
        raise SettingsError(problems)


def load_or_create(path: Path, rotate: bool = False, dry_run: bool = False) -> tuple[Secrets, bool]:
    """Return (secrets, changed). Missing values are generated; all when rotate.

    The file is written 0600 (created with that mode; never world-readable).
    With dry_run nothing is written (used to validate before any write).
    """
    data: dict = {}
    if path.exists() and not rotate:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError([f"{path}: not valid YAML ({exc}); fix or delete it"]) from None
        if not isinstance(data, dict):
            raise SettingsError([f"{path}: must be a mapping name: value; fix or delete it"])
        present = {k: v for k, v in data.items() if v not in (None, "")}
        _check({**{k: "x" * 8 for k in GENERATORS}, **present}, path)
        data = present
    changed = False
    for name, gen in GENERATORS.items():
        if name not in data:
            data[name] = gen()
            changed = True
    secrets = Secrets(**{k: data[k] for k in GENERATORS})
    if changed and not dry_run:
        write(path, secrets)
    elif not dry_run and path.exists() and (path.stat().st_mode & 0o777) != 0o600:
        path.chmod(0o600)
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
