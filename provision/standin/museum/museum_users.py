"""ente-lab Museum STAND-IN: users, one-time tokens (OTT) and key attributes, after upstream's
server/pkg/controller/user/userauth.go and server/pkg/repo/userauth.go. Not Ente's code.

HTTP-agnostic: the handlers in museum.py call ``Users`` and turn ``ApiFailure`` into a response.
Times are microseconds since the epoch (as upstream), from ``now()`` plus the lab-only clock
offset in table ``ente_lab_clock``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

OTT_VALIDITY_US = 60 * 60 * 1_000_000      # OTTValidityDurationInMicroSeconds: one hour
OTT_ACTIVE_CODE_LIMIT = 10                  # OTTActiveCodeLimit
OTT_WRONG_ATTEMPT_LIMIT = 20                # OTTWrongAttemptLimit
TOKEN_LENGTH = 32                           # bytes, URL-safe base64 (with padding, Go's URLEncoding)
SIGNUP, LOGIN, CHANGE = "signup", "login", "change"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id       BIGINT PRIMARY KEY,
    email         TEXT   NOT NULL,
    email_hash    TEXT   NOT NULL UNIQUE,
    creation_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_attributes (
    user_id       BIGINT PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    attributes    JSONB  NOT NULL,
    creation_time BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS otts (
    email_hash      TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    app             TEXT    NOT NULL,
    ott             TEXT    NOT NULL,
    creation_time   BIGINT  NOT NULL,
    expiration_time BIGINT  NOT NULL,
    wrong_attempt   INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT unique_otts_emailhash_app_ott UNIQUE (email_hash, app, ott)
);
CREATE TABLE IF NOT EXISTS tokens (
    user_id       BIGINT  NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    app           TEXT    NOT NULL,
    token         TEXT    NOT NULL UNIQUE,
    creation_time BIGINT  NOT NULL,
    ip            TEXT,
    user_agent    TEXT,
    is_deleted    BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS ente_lab_clock (
    id             BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    offset_seconds BIGINT  NOT NULL DEFAULT 0
);
INSERT INTO ente_lab_clock (id, offset_seconds) VALUES (true, 0) ON CONFLICT (id) DO NOTHING;
COMMENT ON TABLE ente_lab_clock IS 'ente-lab stand-in only: seconds added to now() for OTT times';
"""
SCHEMA_LOCK_KEY = 0x656E7465   # pg_advisory_xact_lock: two Museums creating the schema at once


class ApiFailure(Exception):
    """An error answer: status, JSON body (upstream: an ApiError or {}), and the reason logged."""

    def __init__(self, status: int, body: dict, reason: str) -> None:
        super().__init__(reason)
        self.status, self.body, self.reason = status, body, reason


def api_err(status: int, code: str, message: str) -> ApiFailure:
    return ApiFailure(status, {"code": code, "message": message}, f"{code} : {message}")


def create_schema(cur: Any) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
    cur.execute(SCHEMA)


def app_from_package(package: str) -> str:
    """auth.GetApp: X-Client-Package io.ente.auth* -> auth, io.ente.locker* -> locker, else photos."""
    if package.startswith("io.ente.auth"):
        return "auth"
    if package.startswith("io.ente.locker"):
        return "locker"
    return "photos"


def normalize_email(addr: str) -> str:
    return addr.strip().lower()


def now_us(cur: Any) -> int:
    cur.execute("SELECT offset_seconds FROM ente_lab_clock WHERE id")
    row = cur.fetchone()
    return int((time.time() + (row[0] if row else 0)) * 1_000_000)


@dataclass
class HardcodedOTT:
    emails: dict[str, str] = field(default_factory=dict)
    local_domain_suffix: str = ""
    local_domain_value: str = ""

    def for_email(self, addr: str) -> str:
        if addr in self.emails:
            return self.emails[addr]
        if self.local_domain_suffix and addr.endswith(self.local_domain_suffix):
            return self.local_domain_value
        return ""


def read_hardcoded_ott(cfg: Mapping[str, Any], environment: str, log: Any) -> HardcodedOTT:
    """ReadHardCodedOTTFromConfig: 'email,code' entries; the local-domain pair only in ENVIRONMENT local."""
    hc = cfg.get("hardcoded-ott") if isinstance(cfg.get("hardcoded-ott"), Mapping) else {}
    assert isinstance(hc, Mapping)
    entries = hc.get("emails") or []
    if isinstance(entries, str):
        entries = entries.split()
    out = HardcodedOTT()
    for entry in entries if isinstance(entries, list) else [entries]:
        xs = str(entry).split(",")
        if len(xs) == 2 and xs[0] and xs[1]:
            out.emails.setdefault(xs[0], xs[1])        # upstream: the first matching entry wins
        else:
            log.error(f"Ignoring malformed internal.hardcoded-ott.emails entry {entry}")
    if environment == "local":
        out.local_domain_suffix = str(hc.get("local-domain-suffix") or "")
        out.local_domain_value = str(hc.get("local-domain-value") or "")
    return out


def hashing_key(cfg: Mapping[str, Any], log: Any) -> bytes:
    raw = str((cfg.get("key") or {}).get("hash") or "")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not 16 <= len(key) <= 64:
        log.warn("key.hash is missing or not 16..64 bytes of base64; the stand-in hashes e-mails without it")
        return b""
    return key


class Users:
    def __init__(self, run: Callable[[Callable[[Any], Any]], Any], config: Mapping[str, Any], environment: str,
                 log: Any, send_ott_mail: Callable[[str, str], None]) -> None:
        self.run = run                      # Database.run: fn(cursor) in one transaction
        self.log = log
        self.hardcoded = read_hardcoded_ott(config.get("internal") or {}, environment, log)
        self.hash_key = hashing_key(config, log)
        self.send_ott_mail = send_ott_mail

    def email_hash(self, addr: str) -> str:
        """crypto.GetHash: keyed BLAKE2b-256 (libsodium generichash) with key.hash, base64."""
        return base64.b64encode(hashlib.blake2b(addr.encode(), digest_size=32, key=self.hash_key).digest()).decode()

    # -------------------------------------------------------------- POST /users/ott
    def send_ott(self, addr: str, purpose: str, app: str) -> None:
        addr = normalize_email(addr)
        if not addr:
            raise ApiFailure(400, {}, "bad request: Email id is missing")
        if "\r" in addr or "\n" in addr:
            raise ApiFailure(400, {}, "bad request: invalid recipient email")
        ehash = self.email_hash(addr)

        def checks(cur: Any) -> None:
            cur.execute("SELECT u.user_id, k.user_id IS NOT NULL FROM users u "
                        "LEFT JOIN key_attributes k USING (user_id) WHERE u.email_hash = %s", (ehash,))
            row = cur.fetchone()
            if purpose == CHANGE and row:
                raise ApiFailure(403, {}, "insufficient permissions to perform this action: "
                                          "email already belongs to a user")
            complete = bool(row and row[1])
            if purpose == SIGNUP and complete:
                raise api_err(409, "USER_ALREADY_REGISTERED", "User is already registered")
            if purpose == LOGIN and not complete:
                raise api_err(404, "USER_NOT_REGISTERED", "User is not registered")

        self.run(checks)
        code = f"{secrets.randbelow(1_000_000):06d}"
        hardcoded = self.hardcoded.for_email(addr) if purpose != CHANGE else ""
        if hardcoded:
            self.log.warn(f"returning hardcoded ott for {addr}")
            code = hardcoded

        def add(cur: Any) -> None:
            now = now_us(cur)
            cur.execute("SELECT count(*) FROM otts WHERE email_hash = %s AND app = %s AND expiration_time > %s",
                        (ehash, app, now))
            if cur.fetchone()[0] >= OTT_ACTIVE_CODE_LIMIT:
                raise ApiFailure(429, {}, "too many bad request: Too many ott requests in a short duration")
            cur.execute("INSERT INTO otts (email_hash, email, app, ott, creation_time, expiration_time) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT ON CONSTRAINT unique_otts_emailhash_app_ott "
                        "DO UPDATE SET creation_time = EXCLUDED.creation_time, "
                        "expiration_time = EXCLUDED.expiration_time",
                        (ehash, addr, app, code, now, now + OTT_VALIDITY_US))

        self.run(add)
        if hardcoded:
            self.log.info(f"Added hard coded ott for {addr} : {code}")
            return
        self.log.info(f"Added ott for {ehash}: {code}")
        self.send_ott_mail(addr, code)

    # -------------------------------------------------------------- POST /users/verify-email
    def verify_email(self, addr: str, ott: str, app: str, ip: str, user_agent: str) -> dict:
        addr = normalize_email(addr)
        ott = ott.strip()
        if not addr or not ott:
            raise ApiFailure(400, {}, "bad request: email and ott are required")
        ehash = self.email_hash(addr)

        def check(cur: Any) -> str:
            now = now_us(cur)
            cur.execute("SELECT COALESCE(MAX(wrong_attempt), 0) FROM otts "
                        "WHERE email_hash = %s AND expiration_time > %s AND app = %s", (ehash, now, app))
            if cur.fetchone()[0] >= OTT_WRONG_ATTEMPT_LIMIT:
                raise ApiFailure(429, {}, "too many bad request: User needs to wait before active ott are expired")
            cur.execute("SELECT ott FROM otts WHERE email_hash = %s AND app = %s AND expiration_time > %s "
                        "ORDER BY creation_time FOR UPDATE", (ehash, app, now))
            otts = [r[0] for r in cur.fetchall()]
            self.log.info(f"Valid ott (app: {app}) for {ehash} are {','.join(otts)}")
            if not otts:
                raise ApiFailure(410, {}, "no active OTT")
            if ott not in otts:
                cur.execute("UPDATE otts SET wrong_attempt = wrong_attempt + 1 "
                            "WHERE email_hash = %s AND expiration_time > %s AND app = %s", (ehash, now, app))
                return "wrong"     # committed: the attempt counts
            cur.execute("DELETE FROM otts WHERE email_hash = %s AND ott = %s AND app = %s", (ehash, ott, app))
            return "ok" if cur.rowcount > 0 else "wrong"

        if self.run(check) != "ok":
            raise ApiFailure(401, {}, "incorrect OTT")

        def success(cur: Any) -> dict:
            now = now_us(cur)
            cur.execute("SELECT user_id FROM users WHERE email_hash = %s", (ehash,))
            row = cur.fetchone()
            if row:
                user_id = row[0]
            else:
                while True:
                    user_id = 10**15 + secrets.randbelow(9 * 10**15)      # 16 digits
                    cur.execute("INSERT INTO users (user_id, email, email_hash, creation_time) "
                                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING user_id",
                                (user_id, addr, ehash, now))
                    if cur.fetchone():
                        break
                self.log.info("created user", user_id=user_id)
            token = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_LENGTH)).decode()
            cur.execute("INSERT INTO tokens (user_id, app, token, creation_time, ip, user_agent) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", (user_id, app, token, now, ip, user_agent))
            cur.execute("SELECT attributes FROM key_attributes WHERE user_id = %s", (user_id,))
            attrs = cur.fetchone()
            if attrs is None:
                return {"id": user_id, "token": token}
            # Upstream seals the token to the user's public key (encryptedToken); the stand-in cannot.
            return {"id": user_id, "keyAttributes": attrs[0], "token": token}

        return dict(self.run(success))

    # -------------------------------------------------------------- PUT /users/attributes
    def user_for_token(self, token: str, app: str) -> int:
        def q(cur: Any) -> int | None:
            cur.execute("SELECT user_id FROM tokens WHERE token = %s AND app = %s AND NOT is_deleted", (token, app))
            row = cur.fetchone()
            return row[0] if row else None

        uid = self.run(q) if token else None
        if uid is None:
            raise ApiFailure(401, {}, "authentication required: invalid token")
        return int(uid)

    def set_attributes(self, user_id: int, body: Any) -> None:
        attrs = body.get("keyAttributes") if isinstance(body, Mapping) else None
        required = ("kekSalt", "encryptedKey", "keyDecryptionNonce", "publicKey", "encryptedSecretKey",
                    "secretKeyDecryptionNonce")
        if not isinstance(attrs, Mapping) or not all(isinstance(attrs.get(k), str) and attrs.get(k)
                                                     for k in required):
            raise ApiFailure(400, {}, "bad request: keyAttributes with " + ", ".join(required) + " required")

        def positive(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        if not (positive(attrs.get("memLimit")) and positive(attrs.get("opsLimit"))):
            raise ApiFailure(400, {}, "bad request: mem or ops limit should be > 0")

        def put(cur: Any) -> None:
            cur.execute("INSERT INTO key_attributes (user_id, attributes, creation_time) VALUES (%s, %s, %s) "
                        "ON CONFLICT (user_id) DO NOTHING", (user_id, json.dumps(dict(attrs)), now_us(cur)))
            if cur.rowcount == 0:
                raise ApiFailure(403, {}, "insufficient permissions to perform this action: "
                                          "key attributes are already set")

        self.run(put)
