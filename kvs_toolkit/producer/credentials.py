"""AWS credentials for the producer: botocore's chain, or the AWS IoT credentials provider.

A fleet of cameras does not carry AWS access keys: each device has an X.509 certificate
registered with AWS IoT, and trades it for short-lived credentials of an IAM role
through the AWS IoT credentials provider (what kvssink's ``iot-certificate`` option and
the C producer SDK's IoT credential provider do)::

    GET https://<prefix>.credentials.iot.<region>.amazonaws.com/role-aliases/<alias>/credentials
    x-amzn-iot-thingname: <thing name>
    (TLS with the device's certificate and private key)

    200 {"credentials": {"accessKeyId": ..., "secretAccessKey": ...,
                         "sessionToken": ..., "expiration": "2026-11-26T20:18:06Z"}}

The credentials last the role alias's ``credentialDurationSeconds`` (900 s to 12 h,
default 3600 s). :class:`IotCredentialsProvider` returns them as botocore
:class:`~botocore.credentials.RefreshableCredentials`, which fetch new ones when
signing finds them within ``advisory_refresh_s`` of their expiry (a failure then is
logged and the current ones are kept) and must have new ones within
``mandatory_refresh_s`` (a failure then raises). PutMedia signs each connection when
it opens, so a long upload picks up fresh credentials on its next connection (the
uploader rotates connections well within any credential lifetime).

Only the standard library (``ssl``, ``http.client``) is used: one small request every
tens of minutes does not need a connection pool.

The ``--iot-*`` command-line options live in :mod:`kvs_toolkit.cli.options`
(``add_iot_arguments``, ``producer_aws_from_args``), which hands these credentials to
:class:`kvs_toolkit.aws.AwsAccess`.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import logging
import re
import ssl
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

from botocore.credentials import RefreshableCredentials

from kvs_toolkit.errors import CredentialsError

__all__ = [
    "DEFAULT_ADVISORY_REFRESH_S",
    "DEFAULT_MANDATORY_REFRESH_S",
    "IotCredentialsProvider",
]

log = logging.getLogger(__name__)

THING_NAME_HEADER: Final = "x-amzn-iot-thingname"
# Refresh 5 minutes before expiry, and insist 1 minute before: the shortest lifetime a
# role alias allows is 900 s (CreateRoleAlias credentialDurationSeconds), so this is a
# refresh every 10 minutes at worst. botocore's own defaults (15 and 10 minutes) would
# refresh 900 s credentials on every signature.
DEFAULT_ADVISORY_REFRESH_S: Final = 5 * 60
DEFAULT_MANDATORY_REFRESH_S: Final = 60
# The C producer SDK gives the request 3 s to connect and 5 s to complete.
DEFAULT_TIMEOUT_S: Final = 5.0
# The answer is a few hundred bytes; more than this is not the credentials provider.
_MAX_RESPONSE_BYTES: Final = 64 * 1024
# CreateRoleAlias: 1 to 128 characters of [\w=,@-]; CreateThing: 1 to 128 of [a-zA-Z0-9:_-].
_ROLE_ALIAS: Final = re.compile(r"[\w=,@-]{1,128}", re.ASCII)
_THING_NAME: Final = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_METHOD: Final = "iot-credentials-provider"


class IotCredentialsProvider:
    """Temporary AWS credentials from the AWS IoT credentials provider.

    ``endpoint`` is the account's credentials endpoint (``aws iot describe-endpoint
    --endpoint-type iot:CredentialProvider``), as a host name or an ``https://`` URL
    (a port is allowed, for a local test endpoint). ``cert_file`` / ``key_file`` are
    the device's certificate and private key (PEM), ``ca_file`` the CA that signed the
    endpoint's certificate (Amazon Root CA 1 for AWS; default: the system's trust
    store, which holds it). Files are loaded here, so a wrong path or a key that does
    not match the certificate is a :class:`CredentialsError` at once.

    :meth:`fetch` makes one request; :meth:`credentials` the first request and
    self-refreshing botocore credentials. ``fetches`` counts the requests that
    succeeded.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        cert_file: str | Path,
        key_file: str | Path,
        role_alias: str,
        thing_name: str,
        ca_file: str | Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host, self.port = _parse_endpoint(endpoint)
        if not _ROLE_ALIAS.fullmatch(role_alias):
            raise CredentialsError(
                f"IoT role alias {role_alias!r} is not a valid role alias "
                "(1 to 128 letters, digits or _=,@-)"
            )
        if not _THING_NAME.fullmatch(thing_name):
            raise CredentialsError(
                f"IoT thing name {thing_name!r} is not a valid thing name "
                "(1 to 128 letters, digits or :_-)"
            )
        self.role_alias = role_alias
        self.thing_name = thing_name
        self.timeout_s = timeout_s
        self.path = f"/role-aliases/{quote(role_alias, safe='')}/credentials"
        self.url = f"https://{self.host}{'' if self.port == 443 else f':{self.port}'}{self.path}"
        self._context = _tls_context(Path(cert_file), Path(key_file), ca_file)
        self.fetches = 0

    def fetch(self) -> dict[str, str]:
        """One request: botocore credential metadata (``access_key``, ``secret_key``,
        ``token``, ``expiry_time``). Raises :class:`CredentialsError`."""
        status, headers, body = self._request()
        if status != 200:
            raise CredentialsError(
                f"IoT credentials provider {self.url} answered HTTP {status} for thing "
                f"{self.thing_name!r}: {_service_message(body)}{_hint(status)}",
                status=status,
            )
        metadata = self._parse(body, headers.get("date"))
        self.fetches += 1
        log.info(
            "IoT credentials for role alias %s (thing %s): key ...%s until %s",
            self.role_alias,
            self.thing_name,
            metadata["access_key"][-4:],
            metadata["expiry_time"],
        )
        return metadata

    def credentials(
        self,
        *,
        advisory_refresh_s: int = DEFAULT_ADVISORY_REFRESH_S,
        mandatory_refresh_s: int = DEFAULT_MANDATORY_REFRESH_S,
    ) -> RefreshableCredentials:
        """Fetch credentials now; they refresh themselves (see the module's docstring)."""
        if not 0 <= mandatory_refresh_s <= advisory_refresh_s:
            raise ValueError("need 0 <= mandatory_refresh_s <= advisory_refresh_s")
        return RefreshableCredentials.create_from_metadata(
            metadata=self.fetch(),
            refresh_using=self.fetch,
            method=_METHOD,
            advisory_timeout=advisory_refresh_s,
            mandatory_timeout=mandatory_refresh_s,
        )

    def _request(self) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout_s, context=self._context
        )
        try:
            connection.request("GET", self.path, headers={THING_NAME_HEADER: self.thing_name})
            response = connection.getresponse()
            body = response.read(_MAX_RESPONSE_BYTES + 1)
            return response.status, response.headers, body
        except ssl.SSLCertVerificationError as exc:
            raise CredentialsError(
                f"IoT credentials provider {self.url}: its certificate did not verify "
                f"against the CA ({exc.verify_message}); for AWS the CA is Amazon Root CA 1"
            ) from exc
        except ssl.SSLError as exc:
            raise CredentialsError(
                f"IoT credentials provider {self.url}: TLS failed ({exc.reason or exc}): is "
                "the device certificate registered with AWS IoT, ACTIVE, and its key the "
                "right one?"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            # ConnectionResetError too: TLS 1.3 servers refuse a client certificate
            # after the client thinks the handshake is done.
            raise CredentialsError(
                f"IoT credentials provider {self.url} could not be reached or dropped the "
                f"connection: {exc!r}"
            ) from exc
        finally:
            connection.close()

    def _parse(self, body: bytes, date_header: str | None) -> dict[str, str]:
        where = f"IoT credentials provider {self.url}"
        if len(body) > _MAX_RESPONSE_BYTES:
            raise CredentialsError(f"{where}: answer longer than {_MAX_RESPONSE_BYTES} bytes")
        try:
            document = json.loads(body)
            found = document["credentials"]
            access_key = found["accessKeyId"]
            secret_key = found["secretAccessKey"]
            token = found["sessionToken"]
            expiration = _parse_time(found["expiration"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(
                f"{where}: the answer is not credentials JSON ({type(exc).__name__}: {exc}): "
                f"{body[:200]!r}"
            ) from exc
        if not all(isinstance(v, str) and v for v in (access_key, secret_key, token)):
            raise CredentialsError(f"{where}: empty or non-string fields in {body[:200]!r}")
        return {
            "access_key": access_key,
            "secret_key": secret_key,
            "token": token,
            "expiry_time": _local_expiry(expiration, date_header).isoformat(),
        }


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme != "https":
        raise CredentialsError(
            f"IoT credentials endpoint {endpoint!r} must be https (mutual TLS), not {parts.scheme}"
        )
    if parts.path not in ("", "/") or parts.query or not parts.hostname:
        raise CredentialsError(
            f"IoT credentials endpoint {endpoint!r} should be a host name like "
            "'c2abc.credentials.iot.us-east-1.amazonaws.com' (aws iot describe-endpoint "
            "--endpoint-type iot:CredentialProvider)"
        )
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise CredentialsError(f"IoT credentials endpoint {endpoint!r}: {exc}") from exc
    return parts.hostname, port


def _tls_context(cert: Path, key: Path, ca: str | Path | None) -> ssl.SSLContext:
    for what, path in (("certificate", cert), ("private key", key), ("CA", ca)):
        if path is not None and not Path(path).is_file():
            raise CredentialsError(f"IoT {what} file {str(path)!r} does not exist")
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(f"IoT CA file {str(ca)!r} is not a PEM certificate: {exc}") from exc
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise CredentialsError(
            f"cannot use IoT certificate {str(cert)!r} with key {str(key)!r} (not PEM, or the "
            f"key does not belong to the certificate): {exc}"
        ) from exc
    return context


def _parse_time(value: object) -> datetime.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expiration is {value!r}, not a time")
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _local_expiry(expiration: datetime.datetime, date_header: str | None) -> datetime.datetime:
    """The expiry on this device's clock: the lifetime the server gave, from now.

    A camera without a battery-backed clock may run minutes or days off before NTP
    syncs; comparing the service's ``expiration`` with that clock would refresh on
    every signature (or never). The ``Date`` of the answer says how long they last.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    if date_header:
        try:
            server_now = email.utils.parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            return expiration
        if server_now.tzinfo is None:
            server_now = server_now.replace(tzinfo=datetime.timezone.utc)
        return now + (expiration - server_now)
    return expiration


def _service_message(body: bytes) -> str:
    # The credentials provider answers errors as {"message": "..."}.
    try:
        document = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace") or "(no message)"
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])
    return body[:200].decode("utf-8", "replace")


def _hint(status: int) -> str:
    if status == 403:
        return (
            " (is the certificate ACTIVE and attached to this thing, and does its IoT "
            "policy allow iot:AssumeRoleWithCertificate on the role alias?)"
        )
    if status == 404:
        return " (does the role alias exist in this account and region?)"
    return ""
