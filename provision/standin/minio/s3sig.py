"""AWS Signature Version 4 for S3, shared by the MinIO stand-in (verify) and the mc
stand-in (sign). ente-lab STAND-IN code: Python stdlib only.

Implements the parts of https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html
that S3 clients use against MinIO with path-style URLs:
  - the Authorization header (AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...)
    with x-amz-content-sha256 either the hex SHA-256 of the body or UNSIGNED-PAYLOAD;
  - pre-signed query-string URLs (X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date,
    X-Amz-Expires, X-Amz-SignedHeaders, X-Amz-Signature).
Not implemented: aws-chunked streaming payloads (STREAMING-*), SigV2, POST policy uploads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
AMZ_DATE = "%Y%m%dT%H%M%SZ"
MAX_SKEW = dt.timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600


class SigError(Exception):
    """An S3 error: code (S3's), HTTP status, message."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


def uri_encode(s: str, slash: bool = True) -> str:
    """AWS URI encoding: everything but A-Z a-z 0-9 - _ . ~ (and '/' in paths)."""
    return quote(s, safe="-_.~/" if slash else "-_.~")


def canonical_uri(raw_path: str) -> str:
    # S3 does not normalise the path; decode what the client sent once and re-encode it.
    return uri_encode(unquote(raw_path or "/"))


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        k, _, v = part.partition("=")
        # '+' is a literal plus in S3 query strings signed by SDKs only when encoded as %2B;
        # a bare '+' is taken as a space (form encoding), as S3 does.
        pairs.append((unquote(k.replace("+", " ")), unquote(v.replace("+", " "))))
    return pairs


def canonical_query(pairs: list[tuple[str, str]], skip: str | None = None) -> str:
    enc = sorted((uri_encode(k, False), uri_encode(v, False)) for k, v in pairs if k != skip)
    return "&".join(f"{k}={v}" for k, v in enc)


def _trim(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip())


def canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    out = []
    for name in signed:
        if name not in lower:
            raise SigError("SignatureDoesNotMatch", f"signed header {name!r} is missing from the request")
        out.append(f"{name}:{_trim(lower[name])}\n")
    return "".join(out)


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])


def signature(secret: str, amz_date: str, region: str, creq: str, service: str = "s3") -> str:
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    sts = string_to_sign(amz_date, scope, creq)
    return hmac.new(signing_key(secret, amz_date[:8], region, service), sts.encode(), hashlib.sha256).hexdigest()


def canonical_request(method: str, raw_path: str, query: str, headers: Mapping[str, str],
                      signed: list[str], payload_hash: str) -> str:
    return "\n".join([method, raw_path, query, canonical_headers(headers, signed), ";".join(signed),
                      payload_hash])


# ------------------------------------------------------------------ client side
def sign_headers(method: str, url: str, headers: dict[str, str], body: bytes, access_key: str,
                 secret_key: str, region: str = "us-east-1", now: dt.datetime | None = None) -> dict[str, str]:
    """Return headers (a new dict) with Host, X-Amz-Date, X-Amz-Content-Sha256 and Authorization."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime(AMZ_DATE)
    parts = urlsplit(url)
    out = dict(headers)
    out["Host"] = parts.netloc
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-Sha256"] = hashlib.sha256(body).hexdigest()
    signed = sorted(k.lower() for k in out)
    creq = canonical_request(method, canonical_uri(parts.path), canonical_query(parse_query(parts.query)),
                             out, signed, out["X-Amz-Content-Sha256"])
    sig = signature(secret_key, amz_date, region, creq)
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    out["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return out


def presign_url(method: str, url: str, access_key: str, secret_key: str, expires: int = 3600,
                region: str = "us-east-1", now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime(AMZ_DATE)
    parts = urlsplit(url)
    pairs = parse_query(parts.query) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{amz_date[:8]}/{region}/s3/aws4_request"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    cq = canonical_query(pairs)
    creq = canonical_request(method, canonical_uri(parts.path), cq, {"host": parts.netloc}, ["host"], UNSIGNED)
    sig = signature(secret_key, amz_date, region, creq)
    return f"{parts.scheme}://{parts.netloc}{canonical_uri(parts.path)}?{cq}&X-Amz-Signature={sig}"


# ------------------------------------------------------------------ server side
@dataclass
class Verified:
    access_key: str
    payload_hash: str          # hex digest the body must match, or UNSIGNED
    presigned: bool


_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(.*)$")


def _parse_auth(value: str) -> dict[str, str]:
    m = _AUTH_RE.match(value.strip())
    if not m:
        if value.startswith("AWS "):
            raise SigError("AccessDenied", "Signature Version 2 is not supported by the ente-lab stand-in.")
        raise SigError("AccessDenied", "Unsupported Authorization type.")
    fields = {}
    for item in m.group(1).split(","):
        k, _, v = item.strip().partition("=")
        fields[k] = v
    for need in ("Credential", "SignedHeaders", "Signature"):
        if need not in fields:
            raise SigError("AuthorizationHeaderMalformed", f"The authorization header is malformed; missing {need}.",
                           400)
    return fields


def _credential(cred: str) -> tuple[str, str, str, str]:
    parts = cred.split("/")
    if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request":
        raise SigError("AuthorizationHeaderMalformed", f"Malformed credential scope {cred!r}.", 400)
    return parts[0], parts[1], parts[2], parts[3]


def _parse_date(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise SigError("AccessDenied", "X-Amz-Date is missing or malformed.") from None


def verify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
           secret_for: Callable[[str], str | None], now: dt.datetime | None = None) -> Verified:
    """Check a request's SigV4 signature; raise SigError the way S3 answers, else return who signed.

    secret_for(access_key) returns the secret, or None for an unknown key.
    """
    now = now or dt.datetime.now(dt.UTC)
    lower = {k.lower(): v for k, v in headers.items()}
    pairs = parse_query(raw_query)
    qd = dict(pairs)
    if "authorization" in lower:
        fields = _parse_auth(lower["authorization"])
        access_key, date, region, _ = _credential(fields["Credential"])
        amz_date = lower.get("x-amz-date") or ""
        if not amz_date:
            raise SigError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        when = _parse_date(amz_date)
        signed = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
        payload_hash = lower.get("x-amz-content-sha256", "")
        if not payload_hash:
            raise SigError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
        if payload_hash.startswith("STREAMING-"):
            raise SigError("NotImplemented", "aws-chunked (streaming) payloads are not supported by the ente-lab "
                           "stand-in", 501)
        if payload_hash != UNSIGNED and not re.fullmatch(r"[0-9a-f]{64}", payload_hash):
            raise SigError("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256 value",
                           400)
        query = canonical_query(pairs)
        presigned = False
    elif "X-Amz-Signature" in qd or "X-Amz-Credential" in qd:
        if qd.get("X-Amz-Algorithm") != ALGORITHM:
            raise SigError("AuthorizationQueryParametersError", "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
                           400)
        for need in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"):
            if need not in qd:
                raise SigError("AuthorizationQueryParametersError", f"Query-string authentication requires {need}",
                               400)
        access_key, date, region, _ = _credential(qd["X-Amz-Credential"])
        amz_date = qd["X-Amz-Date"]
        when = _parse_date(amz_date)
        try:
            expires = int(qd["X-Amz-Expires"])
        except ValueError:
            raise SigError("AuthorizationQueryParametersError", "X-Amz-Expires should be a number", 400) from None
        if expires < 0 or expires > MAX_PRESIGN_EXPIRES:
            raise SigError("AuthorizationQueryParametersError",
                           "X-Amz-Expires must be non-negative and less than a week", 400)
        if now > when + dt.timedelta(seconds=expires):
            raise SigError("AccessDenied", "Request has expired")
        if when - now > MAX_SKEW:
            raise SigError("AccessDenied", "Request is not valid yet")
        signed = qd["X-Amz-SignedHeaders"].split(";")
        given = qd["X-Amz-Signature"]
        payload_hash = UNSIGNED
        query = canonical_query(pairs, skip="X-Amz-Signature")
        presigned = True
    else:
        raise SigError("AccessDenied", "Access Denied.")

    secret = secret_for(access_key)
    if secret is None:
        raise SigError("InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records.")
    if date != amz_date[:8]:
        raise SigError("SignatureDoesNotMatch", "Credential date does not match X-Amz-Date.")
    if not presigned and abs(now - when) > MAX_SKEW:
        raise SigError("RequestTimeTooSkewed",
                       "The difference between the request time and the server's time is too large.")
    if "host" not in signed:
        raise SigError("SignatureDoesNotMatch", "The host header must be signed.")
    creq = canonical_request(method, canonical_uri(raw_path), query, headers, signed, payload_hash)
    expected = signature(secret, amz_date, region, creq)
    if not hmac.compare_digest(expected, given):
        raise SigError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                       "you provided. Check your key and signing method.")
    return Verified(access_key=access_key, payload_hash=payload_hash, presigned=presigned)
