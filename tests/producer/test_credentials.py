"""The AWS IoT credentials provider path, against a real local mutual-TLS endpoint.

The test makes its own PKI with ``cryptography`` (a CA, the endpoint's certificate for
127.0.0.1/localhost, a device certificate whose CN is the thing name, and a rogue CA
with its own device certificate), serves the credentials endpoint over HTTPS that
requires a client certificate, and uploads with the credentials it hands out to the
real emulator verifying SigV4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import email.utils
import http.server
import ipaddress
import json
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli import main as cli_main
from kvs_toolkit.cli.options import producer_aws_from_args
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import CredentialsError, PutMediaError
from kvs_toolkit.mkv import Fragment
from kvs_toolkit.producer.credentials import IotCredentialsProvider
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from tests.media import read_fragments
from tests.producer.conftest import ClipFactory
from tests.producer.media import Clip

THING = "porch-cam"
ROLE_ALIAS = "kvs-camera-role-alias"
ADMIN_KEY, ADMIN_SECRET = "AKIDADMIN", "admin-secret"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # never the developer's real credentials or profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


# ---------------------------------------------------------------------------------------
# A PKI made in the test


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA of the endpoint's and the device's certificates
    server_cert: Path
    server_key: Path
    device_cert: Path  # CN = THING
    device_key: Path
    rogue_ca: Path  # a CA nobody trusts
    rogue_cert: Path  # a device certificate signed by the rogue CA, CN = THING
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any = None) -> tuple[Path, Path]:
    cert_path = folder / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{name}.key"
    if key is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "srv", "dev", "rca", "rdev")}
    ca = _certificate("Test Root CA", keys["ca"], None, ca=True)
    server = _certificate(
        "localhost",
        keys["srv"],
        ("Test Root CA", keys["ca"]),
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    device = _certificate(THING, keys["dev"], ("Test Root CA", keys["ca"]))
    rogue_ca = _certificate("Rogue CA", keys["rca"], None, ca=True)
    rogue = _certificate(THING, keys["rdev"], ("Rogue CA", keys["rca"]))
    ca_path, _ = _write(folder, "ca", ca)
    server_paths = _write(folder, "server", server, keys["srv"])
    device_paths = _write(folder, "device", device, keys["dev"])
    rogue_ca_path, _ = _write(folder, "rogue-ca", rogue_ca)
    rogue_paths = _write(folder, "rogue", rogue, keys["rdev"])
    return Pki(ca_path, *server_paths, *device_paths, rogue_ca_path, *rogue_paths)


# ---------------------------------------------------------------------------------------
# The credentials endpoint, over mutual TLS


@dataclass
class IotEndpoint:
    """What the AWS IoT credentials provider does, on 127.0.0.1.

    Each request for a known role alias, with the thing name of the client
    certificate's CN, gets a new key pair ``AKIDIOT<n>`` lasting ``lifetime_s``.
    Errors are answered as the service does: JSON ``{"message": ...}`` with 403 or 404.
    ``server_clock_offset_s`` makes the server's clock (its Date and expiration) run
    off the device's. ``on_issue`` sees every key pair handed out.
    """

    pki: Pki
    lifetime_s: float = 3600.0
    server_clock_offset_s: float = 0.0
    on_issue: Callable[[str, str], None] | None = None
    garbage: bytes | None = None  # answer this instead of credentials JSON
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, thing)
    issued: list[str] = field(default_factory=list)
    url: str = ""

    @contextlib.contextmanager
    def running(self) -> Iterator[IotEndpoint]:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

            def date_time_string(self, timestamp: float | None = None) -> str:
                now = time.time() + endpoint.server_clock_offset_s
                return email.utils.formatdate(now, usegmt=True)

            def do_GET(self) -> None:
                thing = self.headers.get("x-amzn-iot-thingname")
                endpoint.requests.append((self.path, thing))
                match = re.fullmatch(r"/role-aliases/([^/]+)/credentials", self.path)
                peer = self.connection.getpeercert()
                common_name = dict(x[0] for x in peer["subject"])["commonName"]
                if match is None or match.group(1) != ROLE_ALIAS:
                    self._answer(404, {"message": "Role alias does not exist"})
                elif thing != common_name:
                    self._answer(403, {"message": "Access Denied"})
                elif endpoint.garbage is not None:
                    self._answer(200, endpoint.garbage)
                else:
                    self._answer(200, {"credentials": endpoint.issue()})

            def _answer(self, status: int, document: object) -> None:
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def issue(self) -> dict[str, str]:
        number = len(self.issued) + 1
        key, secret = f"AKIDIOT{number}", f"iot-secret-{number}"
        self.issued.append(key)
        if self.on_issue is not None:
            self.on_issue(key, secret)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=self.server_clock_offset_s + self.lifetime_s
        )
        return {
            "accessKeyId": key,
            "secretAccessKey": secret,
            "sessionToken": f"session-token-{number}",
            "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def provider(self, **overrides: Any) -> IotCredentialsProvider:
        options: dict[str, Any] = {
            "cert_file": self.pki.device_cert,
            "key_file": self.pki.device_key,
            "ca_file": self.pki.ca,
            "role_alias": ROLE_ALIAS,
            "thing_name": THING,
        }
        options.update(overrides)
        return IotCredentialsProvider(options.pop("endpoint", self.url), **options)


@pytest.fixture
def iot(pki: Pki) -> Iterator[IotEndpoint]:
    with IotEndpoint(pki).running() as endpoint:
        yield endpoint


# ---------------------------------------------------------------------------------------
# The provider


def test_credentials_over_mutual_tls(iot: IotEndpoint) -> None:
    provider = iot.provider()
    credentials = provider.credentials()
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        "AKIDIOT1",
        "iot-secret-1",
        "session-token-1",
    )
    assert iot.requests == [(f"/role-aliases/{ROLE_ALIAS}/credentials", THING)]
    assert credentials.method == "iot-credentials-provider"
    # an hour's credentials are not refreshed on every signature
    for _ in range(3):
        assert credentials.get_frozen_credentials().access_key == "AKIDIOT1"
    assert provider.fetches == 1 and iot.issued == ["AKIDIOT1"]


def test_credentials_are_refreshed_inside_the_advisory_window(iot: IotEndpoint) -> None:
    iot.lifetime_s = 30  # inside a 60 s advisory window: the next use refreshes
    credentials = iot.provider().credentials(advisory_refresh_s=60, mandatory_refresh_s=10)
    assert credentials.get_frozen_credentials().access_key == "AKIDIOT2"
    assert iot.issued == ["AKIDIOT1", "AKIDIOT2"]


def test_failed_refresh_keeps_valid_credentials_then_raises_when_mandatory(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = IotEndpoint(pki, lifetime_s=30)
    with endpoint.running():
        provider = endpoint.provider()
        advisory = provider.credentials(advisory_refresh_s=60, mandatory_refresh_s=10)
        mandatory = provider.credentials(advisory_refresh_s=60, mandatory_refresh_s=40)
    # the endpoint is gone: an advisory refresh keeps the current (still valid) keys ...
    assert advisory.get_frozen_credentials().access_key == "AKIDIOT1"
    assert "Refreshing temporary credentials failed" in caplog.text
    # ... a mandatory one says why it has none
    with pytest.raises(CredentialsError, match="could not be reached"):
        mandatory.get_frozen_credentials()


@pytest.mark.parametrize("offset_s", [-86400.0, 86400.0])
def test_expiry_follows_the_device_clock_when_the_server_clock_differs(
    pki: Pki, offset_s: float
) -> None:
    # A Pi without a clock battery may be a day off before NTP: the credentials last
    # their lifetime from now on the device's clock, not until the server's expiration.
    with IotEndpoint(pki, server_clock_offset_s=offset_s).running() as endpoint:
        credentials = endpoint.provider().credentials()
        assert credentials.get_frozen_credentials().access_key == "AKIDIOT1"
    assert not credentials.refresh_needed(3600 - 60)
    assert credentials.refresh_needed(3600 + 60)


def test_wrong_client_certificate_is_a_clear_error(iot: IotEndpoint, pki: Pki) -> None:
    provider = iot.provider(cert_file=pki.rogue_cert, key_file=pki.rogue_key)
    with pytest.raises(
        CredentialsError, match=r"IoT credentials provider https://127\.0\.0\.1"
    ) as e:
        provider.credentials()
    assert re.search(r"TLS failed .*device certificate|dropped the connection", str(e.value))
    assert iot.requests == []


def test_endpoint_certificate_from_another_ca_is_a_clear_error(iot: IotEndpoint, pki: Pki) -> None:
    provider = iot.provider(ca_file=pki.rogue_ca)
    with pytest.raises(CredentialsError, match="did not verify against the CA"):
        provider.fetch()


def test_unknown_role_alias_is_a_clear_error(iot: IotEndpoint) -> None:
    with pytest.raises(CredentialsError, match=r"HTTP 404.*Role alias does not exist") as e:
        iot.provider(role_alias="no-such-alias").fetch()
    assert e.value.status == 404
    assert "does the role alias exist" in str(e.value)


def test_thing_name_not_attached_to_the_certificate_is_a_clear_error(iot: IotEndpoint) -> None:
    with pytest.raises(CredentialsError, match="HTTP 403 for thing 'garage-cam': Access Denied"):
        iot.provider(thing_name="garage-cam").fetch()


@pytest.mark.parametrize(
    "garbage",
    [b"<html>maintenance</html>", b'{"credentials": {"accessKeyId": "A"}}', b"[]"],
)
def test_an_answer_that_is_not_credentials_is_a_clear_error(
    iot: IotEndpoint, garbage: bytes
) -> None:
    iot.garbage = garbage
    with pytest.raises(CredentialsError, match="the answer is not credentials JSON"):
        iot.provider().fetch()


def test_unreachable_endpoint_is_a_clear_error(pki: Pki) -> None:
    endpoint = IotEndpoint(pki)
    with endpoint.running():
        url = endpoint.url  # a port nobody listens on once it stopped
    with pytest.raises(CredentialsError, match="could not be reached"):
        endpoint.provider(endpoint=url, timeout_s=2).fetch()


def test_bad_files_and_names_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    good: dict[str, Any] = {
        "cert_file": pki.device_cert,
        "key_file": pki.device_key,
        "role_alias": ROLE_ALIAS,
        "thing_name": THING,
    }
    host = "c2abc.credentials.iot.us-east-1.amazonaws.com"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (host, {"cert_file": tmp_path / "none.crt"}, "certificate file .* does not exist"),
        (host, {"key_file": pki.rogue_key}, "the key does not belong to the certificate"),
        (host, {"ca_file": pki.device_key}, "CA file .* is not a PEM certificate"),
        (host, {"role_alias": "a/b"}, "not a valid role alias"),
        (host, {"thing_name": ""}, "not a valid thing name"),
        (f"http://{host}", {}, "must be https"),
        (f"{host}/role-aliases/x", {}, "should be a host name"),
    ]
    for endpoint, changes, message in cases:
        with pytest.raises(CredentialsError, match=message):
            IotCredentialsProvider(endpoint, **{**good, **changes})
    # a host name alone (as kvssink takes it) is fine
    provider = IotCredentialsProvider(host, **good)
    assert (provider.host, provider.port) == (host, 443)
    assert provider.url == f"https://{host}/role-aliases/{ROLE_ALIAS}/credentials"


# ---------------------------------------------------------------------------------------
# The command-line options


def _parse(*argv: str) -> argparse.Namespace:
    # kvs produce's parser: the global options and the --iot-* ones
    return build_parser("produce").parse_args(["produce", "clip.mp4", "--stream", THING, *argv])


def test_options_choose_the_iot_provider(iot: IotEndpoint, pki: Pki) -> None:
    args = _parse(
        *("--iot-credentials-endpoint", iot.url, "--iot-role-alias", ROLE_ALIAS),
        *("--iot-cert", str(pki.device_cert), "--iot-key", str(pki.device_key)),
        *("--iot-ca", str(pki.ca)),
    )
    credentials = producer_aws_from_args(args).credentials
    assert credentials.get_frozen_credentials().access_key == "AKIDIOT1"
    # no --iot-thing-name: the stream name, as kvssink does
    assert iot.requests == [(f"/role-aliases/{ROLE_ALIAS}/credentials", THING)]


def test_without_iot_options_the_botocore_chain_is_used() -> None:
    credentials = producer_aws_from_args(_parse()).credentials
    assert credentials.get_frozen_credentials().access_key == "AKIDENV"


def test_partial_iot_options_are_a_clear_error(pki: Pki) -> None:
    args = _parse("--iot-cert", str(pki.device_cert), "--iot-thing-name", THING)
    with pytest.raises(
        CredentialsError,
        match="missing --iot-credentials-endpoint, --iot-key, --iot-role-alias",
    ):
        producer_aws_from_args(args)


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(CredentialsError, match=r"profile 'nobody' is not in the AWS config"):
        producer_aws_from_args(_parse("--profile", "nobody"))


# ---------------------------------------------------------------------------------------
# Uploads with the provider's credentials, to the emulator verifying SigV4


@contextlib.contextmanager
def guarded_emulator(iot: IotEndpoint, *, register: bool = True) -> Iterator[Emulator]:
    """An emulator that knows the admin key and (``register``) every key the IoT
    endpoint hands out, as IAM knows the role's session credentials."""
    with Emulator(credentials={ADMIN_KEY: ADMIN_SECRET}) as emulator:
        known: dict[str, str] = emulator.config.credentials  # type: ignore[assignment]
        if register:
            iot.on_issue = known.__setitem__
        _client(emulator, "kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=24)
        yield emulator


def _client(emulator: Emulator, service: Any) -> Any:
    return boto3.client(
        service,
        endpoint_url=emulator.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
    )


def _get_media(emulator: Emulator, count: int) -> list[Fragment]:
    """The stream's first ``count`` fragments, through GetMedia from EARLIEST."""
    return read_fragments(_client(emulator, "kinesis-video-media"), "cam", count)


def _decoded_frames(fragments: list[Fragment]) -> int:
    decoder = FragmentDecoder()
    seen: set[int | None] = set()
    frames = 0
    for fragment in fragments:  # at least once: a re-sent fragment comes twice
        if fragment.cluster_timecode in seen:
            continue
        seen.add(fragment.cluster_timecode)
        frames += len(decoder.decode(fragment))
    return frames + len(decoder.flush())


def test_produce_with_iot_credentials(iot: IotEndpoint, make_clip: ClipFactory) -> None:
    path = make_clip("iot.mp4", Clip())
    with guarded_emulator(iot) as emulator:
        credentials = iot.provider().credentials()
        source = open_source(str(path), SourceOptions(realtime=False, fragment_duration_ms=1000))
        stats = asyncio.run(
            produce(
                source, emulator.endpoint_url, "cam", credentials=credentials,
                fragment_duration_ms=1000,
            )
        )  # fmt: skip
        assert stats.fragments == stats.acked == 2 and not stats.errors
        fragments = _get_media(emulator, 2)
    assert _decoded_frames(fragments) == 50


def test_kvs_produce_with_iot_options(
    iot: IotEndpoint, pki: Pki, make_clip: ClipFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_clip("iot-cli.mp4", Clip())
    with guarded_emulator(iot) as emulator:
        status = cli_main(
            [
                "produce", str(path), "--stream", "cam", "--fast", "--fragment-duration", "1",
                "--endpoint-url", emulator.endpoint_url, "--region", "us-east-1",
                "--iot-credentials-endpoint", iot.url.removeprefix("https://"),
                "--iot-cert", str(pki.device_cert), "--iot-key", str(pki.device_key),
                "--iot-ca", str(pki.ca), "--iot-role-alias", ROLE_ALIAS,
                "--iot-thing-name", THING,
            ]
        )  # fmt: skip
        assert status == 0, capsys.readouterr().err
        # the control plane calls and PutMedia all signed with the IoT provider's keys
        assert iot.issued == ["AKIDIOT1"]
        assert _decoded_frames(_get_media(emulator, 2)) == 50


@dataclass
class SniffingProxy:
    """A TCP proxy on 127.0.0.1 that can cut its connections (a network loss) and
    notes the SigV4 access key and session token of every PutMedia request."""

    target_port: int
    putmedia_keys: list[str] = field(default_factory=list)
    putmedia_tokens: list[str | None] = field(default_factory=list)
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None
    url: str = ""

    def _note(self, head: bytes) -> None:
        key = re.search(rb"Credential=(\w+)/", head)
        token = re.search(rb"(?im)^x-amz-security-token:[ \t]*(\S+)", head)
        self.putmedia_keys.append(key.group(1).decode() if key else "(unsigned)")
        self.putmedia_tokens.append(token.group(1).decode() if token else None)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        request_line = b"POST /putMedia "
        tail = b""  # a request line may straddle two reads
        head: bytearray | None = None  # the headers of a PutMedia request, until complete
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if upstream:
                    if head is None:
                        seen = tail + data
                        start = seen.find(request_line)
                        if start >= 0:
                            head = bytearray(seen[start:])
                    else:
                        head += data
                    if head is not None and b"\r\n\r\n" in head:
                        self._note(bytes(head[: head.index(b"\r\n\r\n")]))
                        head = None
                    tail = data[-len(request_line) :]
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.connections.update((writer, up_writer))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
            )

    def cut(self) -> None:
        for writer in self.connections:
            writer.transport.abort()
        self.connections.clear()


@contextlib.asynccontextmanager
async def sniffing_proxy(emulator: Emulator) -> AsyncIterator[SniffingProxy]:
    proxy = SniffingProxy(int(emulator.endpoint_url.rsplit(":", 1)[1]))
    proxy.server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.url = f"http://127.0.0.1:{proxy.server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        proxy.cut()
        proxy.server.close()
        await proxy.server.wait_closed()


def test_credentials_expiring_during_an_upload_are_refreshed(
    iot: IotEndpoint, make_clip: ClipFactory
) -> None:
    """Credentials that last 8 s, refreshed when less than 5 s are left: the first
    PutMedia connection is signed with the first key; then the emulator forgets that
    key and the connection is cut. The reconnection must be signed with the refreshed
    key (the old one now gets 403, which the uploader treats as fatal), and every frame
    arrives."""
    path = make_clip("iot-realtime.mp4", Clip(frames=125))  # 5 s in real time
    iot.lifetime_s = 8
    with guarded_emulator(iot) as emulator:
        known: dict[str, str] = emulator.config.credentials  # type: ignore[assignment]
        started = time.monotonic()
        credentials = iot.provider().credentials(advisory_refresh_s=5, mandatory_refresh_s=1)

        async def run() -> Any:
            async with sniffing_proxy(emulator) as proxy:
                source = open_source(
                    str(path), SourceOptions(realtime=True, fragment_duration_ms=1000)
                )
                upload = asyncio.create_task(
                    produce(
                        source, None, "cam", credentials=credentials, data_endpoint=proxy.url,
                        fragment_duration_ms=1000,
                    )
                )  # fmt: skip
                # past the 3 s mark the credentials are inside the advisory window
                await asyncio.sleep(3.5 - (time.monotonic() - started))
                assert proxy.putmedia_keys == ["AKIDIOT1"]
                del known["AKIDIOT1"]  # expired, as far as the service is concerned
                proxy.cut()
                stats = await upload
                return stats, proxy.putmedia_keys, proxy.putmedia_tokens

        stats, keys, tokens = asyncio.run(run())
        fragments = _get_media(emulator, stats.fragments)
    assert keys[0] == "AKIDIOT1" and len(keys) >= 2
    assert "AKIDIOT1" not in keys[1:]  # every later connection used refreshed keys
    assert iot.issued[:2] == ["AKIDIOT1", "AKIDIOT2"] and keys[1] == "AKIDIOT2"
    # the session token goes with its key pair (X-Amz-Security-Token, signed)
    assert tokens[:2] == ["session-token-1", "session-token-2"]
    assert stats.reconnects >= 1 and stats.all_acknowledged and not stats.errors
    assert _decoded_frames(fragments) == 125


def test_wrong_credentials_fail_once_with_a_clear_error(
    iot: IotEndpoint, make_clip: ClipFactory
) -> None:
    """The IoT endpoint hands out keys the service does not accept (e.g. the role
    alias points at another account): one PutMedia attempt, a 403 naming the
    problem, no retry storm."""
    path = make_clip("iot.mp4", Clip())
    credentials = iot.provider().credentials()
    with guarded_emulator(iot, register=False) as emulator:

        async def run() -> list[str]:
            async with sniffing_proxy(emulator) as proxy:
                source = open_source(str(path), SourceOptions(realtime=False))
                with pytest.raises(PutMediaError, match="403 UnrecognizedClientException") as e:
                    await produce(
                        source, None, "cam", credentials=credentials, data_endpoint=proxy.url
                    )
                assert "security token included in the request is invalid" in str(e.value)
                return proxy.putmedia_keys

        started = time.monotonic()
        assert asyncio.run(run()) == ["AKIDIOT1"]  # exactly one attempt
        assert time.monotonic() - started < 10
        # through the control plane the same keys fail before any upload
        source = open_source(str(path), SourceOptions(realtime=False))
        with pytest.raises(PutMediaError, match=r"control plane call .*UnrecognizedClient"):
            asyncio.run(produce(source, emulator.endpoint_url, "cam", credentials=credentials))


def test_clients_of_aws_access_sign_with_the_refreshed_credentials(iot: IotEndpoint) -> None:
    """boto3.Session(aws_access_key_id=...) would freeze the first key pair; a client of
    AwsAccess signs each call with the credentials as they are now."""
    iot.lifetime_s = 30  # inside the 60 s advisory window: every use refreshes
    with guarded_emulator(iot) as emulator:
        known: dict[str, str] = emulator.config.credentials  # type: ignore[assignment]
        credentials = iot.provider().credentials(advisory_refresh_s=60, mandatory_refresh_s=10)
        session = AwsAccess(region_name="us-east-1", credentials_override=credentials).session
        assert session.get_credentials() is credentials
        client = session.client("kinesisvideo", endpoint_url=emulator.endpoint_url)
        for _ in range(3):
            names = [s["StreamName"] for s in client.list_streams()["StreamInfoList"]]
            assert names == ["cam"]
            known.pop(iot.issued[-1])  # each key pair is good for one call only
    assert len(iot.issued) >= 4


def test_static_credentials_still_work_as_before() -> None:
    # the chain's plain botocore Credentials: produce() takes either kind
    credentials = producer_aws_from_args(_parse()).credentials
    assert isinstance(credentials, Credentials)
