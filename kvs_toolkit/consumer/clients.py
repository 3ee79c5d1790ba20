"""AWS clients of one stream for the readers (live, archive, HLS): the control plane
and data-plane clients bound to cached GetDataEndpoint answers, all through
:class:`~kvs_toolkit.aws.AwsAccess`; and how a botocore failure is classified
(:func:`translate_error`: retry with a fresh endpoint, back off when throttled, or fail
with a :class:`~kvs_toolkit.errors.GetMediaError`)."""

from __future__ import annotations

import http.client
import logging
from typing import TYPE_CHECKING, Any, Final

import botocore.exceptions
import urllib3.exceptions

from kvs_toolkit.aws import (
    AwsAccess,
    DataEndpointCache,
    connection_failure_reason,
    unreachable_endpoint,
)
from kvs_toolkit.errors import GetMediaError, NoFragmentsError

if TYPE_CHECKING:
    # Annotations only: boto3 costs ~0.15 s to import, which a file read never needs.
    import boto3.session
    from mypy_boto3_kinesis_video_archived_media import KinesisVideoArchivedMediaClient
    from mypy_boto3_kinesis_video_media import KinesisVideoMediaClient
    from mypy_boto3_kinesisvideo import KinesisVideoClient

    from kvs_toolkit.consumer.readers import ReaderStats

__all__ = [
    "NETWORK_ERRORS",
    "TIMEOUTS",
    "Retryable",
    "Stopped",
    "StreamClients",
    "attempt_text",
    "give_up_text",
    "translate_error",
]

log = logging.getLogger(__name__)

THROTTLING_ERRORS: Final = frozenset(
    {
        "ClientLimitExceededException",
        "ConnectionLimitExceededException",
        "ThrottlingException",
        "LimitExceededException",
        "RequestLimitExceeded",
    }
)
ENDPOINT_ERRORS: Final = frozenset({"InvalidEndpointException"})
AUTH_ERRORS: Final = frozenset(
    {
        "NotAuthorizedException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)
# Errors of the connection or of the body while it is read (botocore does not wrap
# the raw urllib3 reads of iter_payload).
NETWORK_ERRORS: Final = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
TIMEOUTS: Final = (
    botocore.exceptions.ReadTimeoutError,
    urllib3.exceptions.ReadTimeoutError,
    TimeoutError,
)


class Stopped(Exception):
    """stop() came during a retry ."""


class Retryable(Exception):
    """A failure worth another attempt (never leaves the readers)."""

    def __init__(
        self, message: str, *, refresh_endpoint: bool = False, throttled: bool = False
    ) -> None:
        super().__init__(message)
        self.refresh_endpoint = refresh_endpoint
        self.throttled = throttled


def translate_error(exc: Exception, what: str) -> Exception:
    """A boto3/botocore failure as a fatal :class:`GetMediaError` or a :class:`Retryable`."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = error.get("Message") or ""
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        detail = f"{code}: {message}" if message else code
        if code in THROTTLING_ERRORS:
            return Retryable(f"{what}: throttled ({detail})", throttled=True)
        if code in ENDPOINT_ERRORS:
            return Retryable(f"{what}: {detail}", refresh_endpoint=True)
        if status >= 500:
            return Retryable(f"{what}: service error {status} ({detail})", refresh_endpoint=True)
        if code == "ResourceNotFoundException":
            # HLS/DASH/GetClip/GetImages answer this code for an existing stream with no
            # fragments in the range (LIVE: none in the last 30 s): not a missing stream
            if "fragment" in message.lower():
                return NoFragmentsError(f"{what}: no fragments in the requested range ({detail})")
            return GetMediaError(f"{what}: the stream was not found ({detail})")
        if code in AUTH_ERRORS or status in (401, 403):
            return GetMediaError(
                f"{what}: not authorized ({detail}); check the AWS credentials and region"
            )
        return GetMediaError(f"{what}: {detail}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return GetMediaError(f"{what}: no AWS credentials found")
    if isinstance(exc, NETWORK_ERRORS):
        # the same words as every command's (kvs_toolkit.aws.call_with_retry)
        return Retryable(
            f"cannot reach {unreachable_endpoint(exc)} ({what}): {connection_failure_reason(exc)}",
            refresh_endpoint=True,
        )
    if isinstance(exc, botocore.exceptions.BotoCoreError):  # e.g. a request boto3 refuses
        return GetMediaError(f"{what}: {exc}")
    return exc


class StreamClients:
    """boto3 clients for one stream through :class:`~kvs_toolkit.aws.AwsAccess`: the
    control plane, and data-plane clients bound to GetDataEndpoint answers that are
    cached (:class:`~kvs_toolkit.aws.DataEndpointCache`) for ``endpoint_refresh_s``."""

    def __init__(
        self,
        stream_name: str | None,
        stream_arn: str | None,
        *,
        aws: AwsAccess | None,
        endpoint_url: str | None,
        region: str | None,
        session: boto3.session.Session | None,
        read_timeout_s: float,
        connect_timeout_s: float,
        endpoint_refresh_s: float,
        stats: ReaderStats,
    ) -> None:
        from botocore.config import Config

        if (stream_name is None) == (stream_arn is None):
            raise ValueError("give exactly one of stream_name and stream_arn")
        self.stream: dict[str, str] = (
            {"StreamName": stream_name} if stream_name else {"StreamARN": stream_arn or ""}
        )
        self.label = stream_name or stream_arn or ""
        if aws is None:
            # a boto3 session given by older code: its credentials and region, as they are
            aws = AwsAccess(
                region_name=region or (session.region_name if session is not None else None),
                endpoint_url=endpoint_url,
                credentials_override=session.get_credentials() if session is not None else None,
            )
        self.aws = aws
        self.region = aws.region
        self.endpoint_url = aws.endpoint_url
        self.endpoint_refresh_s = endpoint_refresh_s
        self.stats = stats
        self._control_config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
        )
        # The readers retry on their own (with back-off and a fresh endpoint).
        self._media_config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1},
            tcp_keepalive=True,
        )
        self._control: KinesisVideoClient | None = None
        self._endpoints: dict[str, DataEndpointCache] = {}
        self._data_clients: dict[tuple[str, str], Any] = {}

    def control(self) -> KinesisVideoClient:
        if self._control is None:
            self._control = self.aws.client("kinesisvideo", config=self._control_config)
        return self._control

    def data_endpoint(self, api_name: str) -> str:
        cache = self._endpoints.get(api_name)
        if cache is None:
            cache = DataEndpointCache(
                self.aws,
                self.stream,
                api_name,
                refresh_s=self.endpoint_refresh_s,
                control_client=self.control(),  # one control-plane client per reader
            )
            self._endpoints[api_name] = cache
        before = cache.lookups
        endpoint = cache()
        if cache.lookups != before:
            self.stats.endpoint_refreshes = sum(c.refreshes for c in self._endpoints.values())
            log.debug("%s data endpoint of %s: %s", api_name, self.label, endpoint)
        return endpoint

    def invalidate(self) -> None:
        """Forget the data endpoints: the next request asks GetDataEndpoint again."""
        for cache in self._endpoints.values():
            cache.invalidate()

    def _data_client(self, service: str, api_name: str) -> Any:
        endpoint = self.data_endpoint(api_name)
        key = (service, api_name)
        cached = self._data_clients.get(key)
        if cached is not None and cached[0] == endpoint:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = self.aws.client(service, endpoint_url=endpoint, config=self._media_config)
        self._data_clients[key] = (endpoint, client)
        return client

    def media(self) -> KinesisVideoMediaClient:
        client: KinesisVideoMediaClient = self._data_client("kinesis-video-media", "GET_MEDIA")
        return client

    def archived(self, api_name: str) -> KinesisVideoArchivedMediaClient:
        client: KinesisVideoArchivedMediaClient = self._data_client(
            "kinesis-video-archived-media", api_name
        )
        return client

    def close(self) -> None:
        for _endpoint, client in self._data_clients.values():
            client.close()
        self._data_clients.clear()
        self._endpoints.clear()
        if self._control is not None:
            self._control.close()
            self._control = None


def attempt_text(attempt: int, max_retries: int | None) -> str:
    """``attempt 2/5`` (``attempt 2`` without a bound): the same words as every command's
    retry message (:func:`kvs_toolkit.aws.call_with_retry`)."""
    return f"attempt {attempt}" if max_retries is None else f"attempt {attempt}/{max_retries + 1}"


def give_up_text(message: str, attempts: int) -> str:
    return f"{message}; gave up after {attempts} attempts (--max-attempts)"
