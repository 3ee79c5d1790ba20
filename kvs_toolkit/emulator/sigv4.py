"""AWS Signature Version 4 verification, sans I/O.

:func:`verify` takes what the HTTP layer saw (method, raw path and query, header pairs,
the payload hash) and either returns the parsed Authorization header or raises a
:class:`SigV4Error` shaped like the AWS front end's answer. The canonical request
follows the SigV4 specification as botocore implements it for non-S3 services (dot
segments removed from the path, then each path byte URI-encoded once more; query
pairs sorted; header values trimmed with inner whitespace runs collapsed).

Error answers. Authentication happens in front of the service, so these are not the
error shapes of the KVS model: KVS's ``NotAuthorizedException`` (401) is what an
authenticated caller gets when IAM denies the action. Against a bad key or signature,
KVS answers as producer and SDK logs show (for example
awslabs/amazon-kinesis-video-streams-producer-sdk-java#90 and
awslabs/amazon-kinesis-video-streams-producer-sdk-cpp#413):

* unknown access key: 403 ``UnrecognizedClientException``, "The security token
  included in the request is invalid."
* wrong signature: 403 ``InvalidSignatureException``, "The request signature we
  calculated does not match the signature you provided. ..."
* no Authorization header: 403 ``MissingAuthenticationTokenException``.
* clock skew over 5 minutes: 403 ``InvalidSignatureException`` "Signature expired"
  (the same text the AWS front end uses).
* an Authorization header that does not parse: ``IncompleteSignatureException``; the
  AWS common-errors page gives it HTTP 400, which is kept here.

botocore has no modelled class for these; it raises ``ClientError`` with that code.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import ClassVar
from urllib.parse import quote, unquote

from kvs_toolkit.emulator.errors import ServiceError

__all__ = [
    "EMPTY_SHA256",
    "MAX_SKEW_SECONDS",
    "UNSIGNED_PAYLOAD",
    "AuthorizationHeader",
    "IncompleteSignatureError",
    "InvalidSignatureError",
    "MissingAuthenticationTokenError",
    "SigV4Error",
    "UnrecognizedClientError",
    "canonical_request",
    "region_from_authorization",
    "signing_key",
    "string_to_sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_SKEW_SECONDS = 300  # the AWS front end's allowed clock skew: 5 minutes
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class SigV4Error(ServiceError):
    """An authentication failure, answered with the AWS front end's lowercase ``message``."""

    status: ClassVar[int] = 403
    message_key: ClassVar[str] = "message"


class MissingAuthenticationTokenError(SigV4Error):
    code = "MissingAuthenticationTokenException"


class UnrecognizedClientError(SigV4Error):
    code = "UnrecognizedClientException"


class InvalidSignatureError(SigV4Error):
    code = "InvalidSignatureException"


class IncompleteSignatureError(SigV4Error):
    code = "IncompleteSignatureException"
    status = 400


@dataclass(frozen=True, slots=True)
class AuthorizationHeader:
    """A parsed SigV4 ``Authorization`` header (Credential, SignedHeaders, Signature)."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"

    @classmethod
    def parse(cls, value: str) -> AuthorizationHeader:
        algorithm, _, rest = value.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise IncompleteSignatureError(
                f"Unsupported authorization algorithm {algorithm!r}; expected {ALGORITHM}."
            )
        fields: dict[str, str] = {}
        for part in rest.split(","):
            key, sep, val = part.strip().partition("=")
            if not sep:
                raise IncompleteSignatureError(
                    f"Authorization header requires 'key=value' parts; got {part.strip()!r}."
                )
            fields[key] = val
        missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in fields]
        if missing:
            raise IncompleteSignatureError(
                f"Authorization header requires {', '.join(missing)} parameter(s)."
            )
        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
            raise IncompleteSignatureError(
                "Credential must have the form <access key>/<date>/<region>/<service>/aws4_request."
            )
        signed = tuple(fields["SignedHeaders"].split(";"))
        if not all(signed):
            raise IncompleteSignatureError("SignedHeaders must not have empty names.")
        return cls(
            access_key=scope[0],
            date=scope[1],
            region=scope[2],
            service=scope[3],
            signed_headers=signed,
            signature=fields["Signature"],
        )


def region_from_authorization(value: str | None) -> str | None:
    """The region of a SigV4 credential scope, without verifying anything."""
    if not value:
        return None
    try:
        return AuthorizationHeader.parse(value).region
    except SigV4Error:
        return None


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, and AWS also collapses repeated slashes (as botocore does).
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    joined = "/" + "/".join(out)
    if path.endswith("/") and joined != "/":
        joined += "/"
    return joined


def _canonical_query(raw_query: str) -> str:
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """The SigV4 canonical request for the given parts (``raw_path`` as sent, encoded)."""
    path = quote(_remove_dot_segments(raw_path or "/"), safe="/~")
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(set(signed_headers))
    canonical_headers = "".join(f"{n}:{','.join(by_name.get(n, []))}\n" for n in names)
    return "\n".join(
        [
            method.upper(),
            path,
            _canonical_query(raw_query),
            canonical_headers,
            ";".join(names),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _request_time(headers: Sequence[tuple[str, str]]) -> tuple[str, float]:
    """(the X-Amz-Date form, epoch seconds) from X-Amz-Date or else Date."""
    lookup = {name.lower(): value for name, value in headers}
    amz_date = lookup.get("x-amz-date")
    if amz_date is not None:
        if not _AMZ_DATE.fullmatch(amz_date.strip()):
            raise IncompleteSignatureError(
                f"X-Amz-Date {amz_date!r} must be in the ISO 8601 basic form YYYYMMDD'T'HHMMSS'Z'."
            )
        amz_date = amz_date.strip()
        return amz_date, float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    date = lookup.get("date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError) as exc:
            raise IncompleteSignatureError(f"Date header {date!r} does not parse.") from exc
        stamp = parsed.timestamp()
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp)), stamp
    raise IncompleteSignatureError(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )


def _fmt(stamp: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp))


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    payload_hash: str,
    credentials: Mapping[str, str],
    now: float | None = None,
    service: str = "kinesisvideo",
    max_skew: float = MAX_SKEW_SECONDS,
    region: str | None = None,
) -> AuthorizationHeader:
    """Check a request's SigV4 signature against ``credentials`` (access key -> secret).

    ``payload_hash`` is what the signer must have used: the ``x-amz-content-sha256``
    header when sent, else the SHA-256 of the body (the empty-string hash for a
    streaming body, as the C producer signs PutMedia). ``region``: the only region the
    credential scope may name (any when None). Raises :class:`SigV4Error`.
    """
    authorization = [value for name, value in headers if name.lower() == "authorization"]
    if not authorization:
        raise MissingAuthenticationTokenError("Missing Authentication Token")
    auth = AuthorizationHeader.parse(authorization[0])
    if "host" not in auth.signed_headers:
        raise InvalidSignatureError("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    amz_date, stamp = _request_time(headers)
    current = time.time() if now is None else now
    if stamp < current - max_skew:
        raise InvalidSignatureError(
            f"Signature expired: {amz_date} is now earlier than {_fmt(current - max_skew)} "
            f"({_fmt(current)} - 5 min.)"
        )
    if stamp > current + max_skew:
        raise InvalidSignatureError(
            f"Signature not yet current: {amz_date} is still later than "
            f"{_fmt(current + max_skew)} ({_fmt(current)} + 5 min.)"
        )
    if auth.date != amz_date[:8]:
        raise InvalidSignatureError(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if auth.service != service:
        raise InvalidSignatureError(f"Credential should be scoped to correct service: '{service}'.")
    if region is not None and auth.region != region:
        # The AWS front end's wording for a scope naming another region.
        raise InvalidSignatureError(
            f"Credential should be scoped to a valid region, not '{auth.region[:64]}'."
        )
    secret = credentials.get(auth.access_key)
    if secret is None:
        raise UnrecognizedClientError("The security token included in the request is invalid.")
    canonical = canonical_request(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        signed_headers=auth.signed_headers,
        payload_hash=payload_hash,
    )
    expected = hmac.new(
        signing_key(secret, auth.date, auth.region, auth.service),
        string_to_sign(amz_date, auth.scope, canonical).encode("utf-8"),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, auth.signature.lower()):
        raise InvalidSignatureError(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details."
        )
    return auth


def is_hex_sha256(value: str) -> bool:
    return bool(_HEX_SHA256.fullmatch(value))
