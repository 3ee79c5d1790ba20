"""SigV4 verification: real boto3 signatures, and the verifier on its own."""

from __future__ import annotations

import datetime
import hashlib
import time
from typing import Any

import botocore.auth
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.emulator.sigv4 import (
    EMPTY_SHA256,
    AuthorizationHeader,
    IncompleteSignatureError,
    InvalidSignatureError,
    MissingAuthenticationTokenError,
    UnrecognizedClientError,
    region_from_authorization,
    verify,
)

from .conftest import ACCESS_KEY, CREDENTIALS, REGION, SECRET, ClientFactory
from .helpers import raw_post


def _client_error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# -- against the running emulator -------------------------------------------------------


def test_good_key_passes_for_all_clients(emulator: Emulator, make_client: ClientFactory) -> None:
    kv = make_client("kinesisvideo", emulator.endpoint_url)
    kv.create_stream(StreamName="signed", DataRetentionInHours=1)
    archived = make_client("kinesis-video-archived-media", emulator.endpoint_url)
    assert archived.list_fragments(StreamName="signed")["Fragments"] == []
    # A session token is signed too (x-amz-security-token) and accepted.
    with_token = make_client("kinesisvideo", emulator.endpoint_url, aws_session_token="token-value")
    assert with_token.describe_stream(StreamName="signed")["StreamInfo"]["StreamName"] == "signed"


def test_wrong_secret_is_rejected(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client("kinesisvideo", emulator.endpoint_url, aws_secret_access_key="wrong")
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    assert _client_error(exc) == ("InvalidSignatureException", 403)
    assert "signature we calculated does not match" in str(exc.value)


def test_unknown_access_key_is_rejected(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client("kinesisvideo", emulator.endpoint_url, aws_access_key_id="AKIDOTHER")
    with pytest.raises(ClientError) as exc:
        client.create_stream(StreamName="x")
    assert _client_error(exc) == ("UnrecognizedClientException", 403)
    assert "security token included in the request is invalid" in str(exc.value)


def test_missing_authentication(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client(
        "kinesisvideo", emulator.endpoint_url, config=Config(signature_version=UNSIGNED)
    )
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    assert _client_error(exc) == ("MissingAuthenticationTokenException", 403)
    response = raw_post(emulator.endpoint_url, "/listStreams")
    assert response.status == 403
    assert response.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert response.json() == {"message": "Missing Authentication Token"}
    # Authentication comes before routing, as in front of the real service.
    assert raw_post(emulator.endpoint_url, "/noSuchOperation").status == 403


def test_malformed_authorization(emulator: Emulator) -> None:
    response = raw_post(
        emulator.endpoint_url,
        "/listStreams",
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=AKIDTEST/20200101"},
    )
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "IncompleteSignatureException"


@pytest.mark.parametrize("minutes", [-10, 10])
def test_clock_skew_is_rejected(
    emulator: Emulator, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, minutes: int
) -> None:
    skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(
        minutes=minutes
    )
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: skewed)
    client = make_client("kinesisvideo", emulator.endpoint_url)
    with pytest.raises(ClientError) as exc:
        client.list_streams()
    assert _client_error(exc) == ("InvalidSignatureException", 403)
    assert "Signature expired" in str(exc.value) or "not yet current" in str(exc.value)


def test_small_skew_is_accepted(
    emulator: Emulator, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        minutes=4
    )
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: skewed)
    client = make_client("kinesisvideo", emulator.endpoint_url)
    assert client.list_streams()["StreamInfoList"] == []


def _signed_headers(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    payload_hash: str | None = None,
    secret: str = SECRET,
) -> dict[str, str]:
    """Headers of a request signed by botocore, optionally with a fixed payload hash."""

    class Signer(SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            if payload_hash is not None:
                return payload_hash
            return str(super().payload(request))

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    Signer(Credentials(ACCESS_KEY, secret), "kinesisvideo", REGION).add_auth(request)
    return dict(request.headers.items())


def test_put_media_signed_with_empty_payload_hash(emulator: Emulator) -> None:
    # The C producer signs PutMedia with the SHA-256 of the empty string while streaming
    # a body. Passing authentication reaches PutMedia, which answers 404 for stream "s".
    url = emulator.endpoint_url + "/putMedia"
    host = emulator.endpoint_url.removeprefix("http://")
    headers = {"host": host, "x-amzn-stream-name": "s", "x-amzn-fragment-timecode-type": "ABSOLUTE"}
    signed = _signed_headers(url, b"", headers, payload_hash=EMPTY_SHA256)
    response = raw_post(
        emulator.endpoint_url, "/putMedia", b"\x1a\x45\xdf\xa3" * 100, signed, chunked=True
    )
    assert response.status == 404
    assert response.headers["x-amzn-errortype"] == "ResourceNotFoundException"
    wrong = _signed_headers(url, b"", headers, payload_hash=EMPTY_SHA256, secret="wrong")
    response = raw_post(emulator.endpoint_url, "/putMedia", b"data", wrong, chunked=True)
    assert response.status == 403


def test_put_media_signed_unsigned_payload(emulator: Emulator) -> None:
    # The Java producer sends and signs x-amz-content-sha256: UNSIGNED-PAYLOAD.
    url = emulator.endpoint_url + "/putMedia"
    host = emulator.endpoint_url.removeprefix("http://")
    headers = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    signed = _signed_headers(url, b"", headers)
    response = raw_post(emulator.endpoint_url, "/putMedia", b"streamed", signed, chunked=True)
    # authenticated; then refused for naming no stream (not 403)
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "InvalidArgumentException"


def test_body_must_match_its_signature(emulator: Emulator) -> None:
    url = emulator.endpoint_url + "/listStreams"
    host = emulator.endpoint_url.removeprefix("http://")
    signed = _signed_headers(url, b"{}", {"host": host, "Content-Type": "application/json"})
    assert raw_post(emulator.endpoint_url, "/listStreams", b"{}", signed).status == 200
    assert raw_post(emulator.endpoint_url, "/listStreams", b"{ }", signed).status == 403
    # A declared hash that is not the body's.
    declared = _signed_headers(
        url,
        b"{}",
        {"host": host, "x-amz-content-sha256": hashlib.sha256(b"other").hexdigest()},
    )
    response = raw_post(emulator.endpoint_url, "/listStreams", b"{}", declared)
    assert response.status == 403
    assert response.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_no_credentials_means_no_verification(make_client: ClientFactory) -> None:
    with Emulator() as emu:
        client = make_client("kinesisvideo", emu.endpoint_url, aws_secret_access_key="anything")
        client.create_stream(StreamName="open")
        assert raw_post(emu.endpoint_url, "/describeStream", b'{"StreamName":"open"}').status == 200


# -- the verifier alone -----------------------------------------------------------------


def _botocore_signed(
    url: str, *, method: str = "POST", body: bytes = b"{}", region: str = "us-east-1"
) -> tuple[AWSRequest, str]:
    request = AWSRequest(
        method=method, url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), "kinesisvideo", region).add_auth(request)
    return request, hashlib.sha256(body).hexdigest()


def _verify(request: AWSRequest, payload_hash: str, **kwargs: Any) -> AuthorizationHeader:
    from urllib.parse import urlsplit

    parts = urlsplit(str(request.url))
    headers = [(k, str(v)) for k, v in request.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("Host", parts.netloc))
    options: dict[str, Any] = {"credentials": CREDENTIALS}
    options.update(kwargs)
    return verify(
        method=request.method or "POST",
        raw_path=parts.path,
        raw_query=parts.query,
        headers=headers,
        payload_hash=payload_hash,
        **options,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4567/describeStream",
        "http://localhost/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=abc%2Fdef%3D&b=2&a=1",
        "http://localhost/a/./b/../c//d?x=%20y&x=a",
        "http://localhost/path%20with%20space",
    ],
)
def test_verify_accepts_botocore_signatures(url: str) -> None:
    request, payload_hash = _botocore_signed(url, region="ap-south-1")
    auth = _verify(request, payload_hash)
    assert auth.access_key == ACCESS_KEY
    assert auth.region == "ap-south-1"
    assert auth.service == "kinesisvideo"
    assert "host" in auth.signed_headers


def test_verify_rejections() -> None:
    request, payload_hash = _botocore_signed("http://localhost/listStreams")
    with pytest.raises(InvalidSignatureError):
        _verify(request, hashlib.sha256(b"tampered").hexdigest())
    with pytest.raises(UnrecognizedClientError):
        _verify(request, payload_hash, credentials={"OTHER": SECRET})
    with pytest.raises(InvalidSignatureError, match="Signature expired"):
        _verify(request, payload_hash, now=time.time() + 301)
    with pytest.raises(InvalidSignatureError, match="not yet current"):
        _verify(request, payload_hash, now=time.time() - 301)
    with pytest.raises(InvalidSignatureError, match="correct service"):
        _verify(request, payload_hash, service="s3")
    assert _verify(request, payload_hash, now=time.time() + 250).access_key == ACCESS_KEY
    with pytest.raises(MissingAuthenticationTokenError):
        verify(
            method="POST",
            raw_path="/",
            raw_query="",
            headers=[("Host", "x")],
            payload_hash=EMPTY_SHA256,
            credentials=CREDENTIALS,
        )


def test_verify_scope_date_must_match() -> None:
    request, payload_hash = _botocore_signed("http://localhost/listStreams")
    request.headers.replace_header(
        "Authorization",
        str(request.headers["Authorization"]).replace(
            str(request.headers["X-Amz-Date"])[:8], "19990101"
        ),
    )
    with pytest.raises(InvalidSignatureError, match="Credential scope"):
        _verify(request, payload_hash)


@pytest.mark.parametrize(
    "value",
    [
        "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host;;x, Signature=0",
    ],
)
def test_malformed_authorization_headers(value: str) -> None:
    with pytest.raises(IncompleteSignatureError):
        AuthorizationHeader.parse(value)
    assert region_from_authorization(value) is None


def test_region_from_authorization() -> None:
    value = (
        "AWS4-HMAC-SHA256 Credential=AK/20240101/eu-central-1/kinesisvideo/aws4_request, "
        "SignedHeaders=host, Signature=ab"
    )
    assert region_from_authorization(value) == "eu-central-1"
    assert region_from_authorization(None) is None
