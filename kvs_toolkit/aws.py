"""AWS access for every command and class: session, region, credentials, endpoints.

One place decides, the same way for the producer, the consumer, the analysis stack and
the CLI:

* **Region**: the one given, else ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's
  ``region``; against a loopback endpoint (the emulator) ``us-east-1``, its default.
  Against AWS with none of these, :class:`ConfigurationError` (one line), never a
  botocore ``NoRegionError`` traceback.
* **Endpoint**: the one given, else ``AWS_ENDPOINT_URL_<SERVICE>`` (e.g.
  ``AWS_ENDPOINT_URL_KINESIS_VIDEO``), else ``AWS_ENDPOINT_URL``, as the AWS SDKs read
  them; None means the service's public endpoint.
* **Credentials**: the ones given (e.g. the IoT credentials provider's, refreshing), else
  botocore's chain (environment, ``--profile``/``AWS_PROFILE``, container or instance
  role). Against a loopback endpoint with no credentials anywhere, placeholder
  credentials sign the requests and one notice says so, so the quick starts work on a
  fresh machine; the emulator checks signatures only with ``--verify-sigv4``. Against
  AWS, missing credentials are a :class:`~kvs_toolkit.errors.CredentialsError`. Every
  request is signed: the data plane (PutMedia, GetMedia) with the same credentials as
  the control plane.

:class:`DataEndpointCache` is the one cache of GetDataEndpoint answers (per API name);
:class:`~kvs_toolkit.retry.RetryPolicy` the one back-off. boto3 is imported when a
session is first needed, not with this module.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from kvs_toolkit.errors import (
    ConfigurationError,
    CredentialsError,
    EndpointUnreachableError,
    KvsError,
)
from kvs_toolkit.retry import RetryPolicy

if TYPE_CHECKING:
    import boto3.session
    from botocore.config import Config
    from botocore.credentials import Credentials

__all__ = [
    "DEFAULT_LOCAL_REGION",
    "PLACEHOLDER_ACCESS_KEY",
    "AwsAccess",
    "DataEndpointCache",
    "call_with_retry",
    "connection_failure_reason",
    "endpoint_url_from_environment",
    "is_loopback_url",
    "unreachable_endpoint",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The emulator's default region, used against a loopback endpoint when none is set.
DEFAULT_LOCAL_REGION: Final = "us-east-1"
#: Placeholder credentials for a local endpoint when none are configured.
PLACEHOLDER_ACCESS_KEY: Final = "KVSTOOLKITLOCAL"
_PLACEHOLDER_SECRET: Final = "kvs-toolkit-local-placeholder-secret"
# boto3 service name -> the service id its AWS_ENDPOINT_URL_<ID> variable is named by.
_SERVICE_IDS: Final = {
    "kinesisvideo": "KINESIS_VIDEO",
    "kinesis-video-media": "KINESIS_VIDEO_MEDIA",
    "kinesis-video-archived-media": "KINESIS_VIDEO_ARCHIVED_MEDIA",
    "kinesis-video-signaling": "KINESIS_VIDEO_SIGNALING",
    "kinesis-video-webrtc-storage": "KINESIS_VIDEO_WEBRTC_STORAGE",
    "rekognition": "REKOGNITION",
    "kinesis": "KINESIS",
    "s3": "S3",
    "dynamodb": "DYNAMODB",
    "cloudwatch": "CLOUDWATCH",
    "sns": "SNS",
}
# GetDataEndpoint at most this often per API while reconnecting (its limit is a few TPS);
# the answer is also refreshed after this long (docs/kvs-wire.md "Data endpoints").
DEFAULT_ENDPOINT_REFRESH_S: Final = 60.0
_notice_lock = threading.Lock()
_noticed: set[str] = set()


def is_loopback_url(url: str | None) -> bool:
    """True for ``http://127.0.0.1:4567``, ``http://localhost``, ``https://[::1]``..."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_url_from_environment(service: str) -> str | None:
    """``AWS_ENDPOINT_URL_<SERVICE>`` or ``AWS_ENDPOINT_URL``, as the SDKs read them."""
    service_id = _SERVICE_IDS.get(service, service.upper().replace("-", "_"))
    return os.environ.get(f"AWS_ENDPOINT_URL_{service_id}") or os.environ.get("AWS_ENDPOINT_URL")


def _notice_once(key: str, message: str, *args: object) -> None:
    with _notice_lock:
        if key in _noticed:
            return
        _noticed.add(key)
    log.warning(message, *args)


@dataclass
class AwsAccess:
    """How to reach AWS (or the emulator): give it once, use it everywhere.

    ``endpoint_url`` is the Kinesis Video control plane's (the emulator's URL, or None
    for AWS; ``AWS_ENDPOINT_URL*`` are read when it is None). ``credentials_override``
    replaces the chain (e.g. the
    :class:`~kvs_toolkit.producer.credentials.IotCredentialsProvider`'s).
    ``retry`` bounds every retried call of the clients built on it. Session, region and
    credentials are resolved on first use and then kept; thread-safe after that.
    """

    region_name: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    credentials_override: Credentials | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _session: boto3.session.Session | None = field(default=None, init=False, repr=False)
    _credentials: Credentials | None = field(default=None, init=False, repr=False)
    _chain: Any = field(default=None, init=False, repr=False)  # botocore session: the chain
    _placeholder: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.endpoint_url is None:
            self.endpoint_url = endpoint_url_from_environment("kinesisvideo")
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(
                    f"--endpoint-url {self.endpoint_url!r} is not an http:// or https:// URL"
                )

    @property
    def local(self) -> bool:
        """True when the endpoint is on this machine (the emulator)."""
        return is_loopback_url(self.endpoint_url)

    def _botocore_session(self) -> Any:
        import botocore.exceptions
        import botocore.session

        core = botocore.session.get_session()
        if self.profile:
            core.set_config_variable("profile", self.profile)
            try:
                core.get_scoped_config()  # raises ProfileNotFound now, not later
            except botocore.exceptions.ProfileNotFound as exc:
                raise CredentialsError(
                    f"profile {self.profile!r} is not in the AWS config files "
                    "(~/.aws/config, ~/.aws/credentials)"
                ) from exc
        return core

    @property
    def session(self) -> boto3.session.Session:
        """A boto3 session whose clients sign with :attr:`credentials` as they are (a
        refreshing credentials object keeps refreshing)."""
        if self._session is None:
            import boto3.session
            import botocore.credentials

            core = self._botocore_session()
            credentials = self.credentials
            core.register_component(
                "credential_provider",
                botocore.credentials.CredentialResolver([_given(credentials)]),
            )
            self._session = boto3.session.Session(botocore_session=core)
        return self._session

    @property
    def region(self) -> str:
        """The region to sign for and reach; :class:`ConfigurationError` if none."""
        region = (
            self.region_name
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or self._profile_region()
        )
        if region:
            return region
        if self.local:
            return DEFAULT_LOCAL_REGION
        raise ConfigurationError(
            "no AWS region: pass --region, set AWS_REGION, or set region in the profile"
        )

    def _profile_region(self) -> str | None:
        if self._chain is None:
            self._chain = self._botocore_session()
        region: str | None = self._chain.get_config_variable("region")
        return region

    @property
    def credentials(self) -> Credentials:
        """The credentials every request is signed with (see the module docstring)."""
        if self._credentials is not None:
            return self._credentials
        if self.credentials_override is not None:
            self._credentials = self.credentials_override
            return self._credentials
        import botocore.exceptions
        from botocore.credentials import Credentials

        try:
            if self._chain is None:
                self._chain = self._botocore_session()
            found = self._chain.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise CredentialsError(f"AWS credentials could not be loaded: {exc}") from exc
        if found is None:
            if not self.local:
                raise CredentialsError(
                    "no AWS credentials found: run 'aws configure', set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or pass --profile"
                )
            _notice_once(
                "placeholder",
                "no AWS credentials found: signing requests to the local endpoint %s "
                "with placeholder credentials",
                self.endpoint_url,
            )
            found = Credentials(PLACEHOLDER_ACCESS_KEY, _PLACEHOLDER_SECRET)
            self._placeholder = True
        self._credentials = found
        return self._credentials

    def check(self) -> None:
        """Resolve region and credentials now, so a command fails before it starts work."""
        _ = self.region
        _ = self.credentials

    def client(
        self,
        service: str,
        *,
        endpoint_url: str | None = None,
        config: Config | None = None,
    ) -> Any:
        """A boto3 client of ``service`` signed with :attr:`credentials`.

        ``endpoint_url`` defaults to :attr:`endpoint_url` for ``kinesisvideo`` and to the
        ``AWS_ENDPOINT_URL*`` variables for other services (data-plane clients pass the
        GetDataEndpoint answer).
        """
        if endpoint_url is None:
            endpoint_url = (
                self.endpoint_url
                if service == "kinesisvideo"
                else endpoint_url_from_environment(service)
            )
        _ = self.credentials
        if self._placeholder and not is_loopback_url(endpoint_url):
            # placeholder credentials are for the local endpoint only: a client of a
            # service elsewhere (AWS) gets the same one-line error as no credentials
            raise CredentialsError(
                f"no AWS credentials found for {service} at "
                f"{endpoint_url or 'AWS'}: run 'aws configure', set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or pass --profile"
            )
        if config is None:
            from botocore.config import Config

            # connection failures are retried by our policy (call_with_retry), once and
            # with one message, not again inside botocore
            config = Config(connect_timeout=5, retries={"total_max_attempts": 1})
        return self.session.client(
            service,  # type: ignore[call-overload]
            region_name=self.region,
            endpoint_url=endpoint_url,
            config=config,
        )

    def describe(self) -> str:
        """Where requests go, for messages: the endpoint URL, or ``AWS (region)``."""
        return self.endpoint_url or f"AWS ({self.region_name or 'default region'})"


def _given(credentials: Credentials) -> Any:
    """A botocore credential provider handing out one credentials object *as it is*
    (a RefreshableCredentials keeps refreshing; boto3's keyword arguments would copy
    the keys of the moment)."""
    import botocore.credentials

    class Given(botocore.credentials.CredentialProvider):
        METHOD = "kvs-toolkit"
        CANONICAL_NAME = "kvs-toolkit"

        def load(self) -> Credentials:
            return credentials

    return Given()


class DataEndpointCache:
    """A stream's data endpoint for one API (PUT_MEDIA, GET_MEDIA, ...), looked up again
    when it is older than ``refresh_s`` or after :meth:`invalidate`.

    GetDataEndpoint is called at most once per ``refresh_s`` while the last answer is
    still believed (a reconnection storm must not become a control-plane storm); a
    failed lookup keeps the last endpoint when there is one, since in an outage the
    control plane is as unreachable as the data plane. Blocking (boto3): async callers
    run it in a thread.
    """

    def __init__(
        self,
        aws: AwsAccess,
        stream: dict[str, str],
        api_name: str,
        *,
        endpoint: str | None = None,
        refresh_s: float = DEFAULT_ENDPOINT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        control_client: Any = None,
    ) -> None:
        self.aws = aws
        self.stream = stream
        self.api_name = api_name
        self.endpoint = endpoint
        self.lookups = 0
        self.refreshes = 0
        self._refresh_s = refresh_s
        self._clock = clock
        self._looked_up_at = clock() if endpoint is not None else None
        self._client: Any = control_client  # a kinesisvideo client to share, or made here
        self._owns_client = control_client is None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """The next call looks the endpoint up again (it may have moved)."""
        with self._lock:
            self._looked_up_at = None

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if (
                self.endpoint is not None
                and self._looked_up_at is not None
                and now - self._looked_up_at < self._refresh_s
            ):
                return self.endpoint
            self._looked_up_at = now
            self.lookups += 1
            try:
                if self._client is None:
                    self._client = self.aws.client("kinesisvideo")
                found: str = self._client.get_data_endpoint(APIName=self.api_name, **self.stream)[
                    "DataEndpoint"
                ]
            except KvsError:
                raise
            except Exception as exc:
                if self.endpoint is None:
                    raise
                log.warning("GetDataEndpoint failed, keeping %s: %s", self.endpoint, exc)
                return self.endpoint
            if self.endpoint is not None and found != self.endpoint:
                log.info("%s endpoint of %s is now %s", self.api_name, self.stream, found)
            if self.endpoint is not None:
                self.refreshes += 1
            self.endpoint = found
            return found

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None


def _is_connection_failure(exc: BaseException) -> bool:
    import botocore.exceptions

    return isinstance(
        exc,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            ConnectionError,
        ),
    )


def call_with_retry(
    aws: AwsAccess,
    what: str,
    call: Callable[[], _T],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> _T:
    """``call()``, retried with ``aws.retry`` while the endpoint cannot be reached.

    Every retry logs the same one line (``cannot reach URL (what): reason; attempt 2/5,
    next in 1.0 s``); when the policy gives up, :class:`EndpointUnreachableError`.
    Other errors (the service's answers) are raised as they are.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not _is_connection_failure(exc):
                raise
            reason = connection_failure_reason(exc)
            if aws.retry.gives_up_after(attempt):
                raise EndpointUnreachableError(
                    f"cannot reach {aws.describe()} ({what}): {reason}; gave up after "
                    f"{attempt} attempt{'s' if attempt > 1 else ''} (--max-attempts)"
                ) from exc
            delay = aws.retry.delay(attempt)
            log.warning(
                "cannot reach %s (%s): %s; %s, next in %.1f s",
                aws.describe(),
                what,
                reason,
                aws.retry.describe(attempt),
                delay,
            )
            sleep(delay)


def connection_failure_reason(exc: BaseException) -> str:
    """A short cause: "connection refused", "timed out", "name not resolved"..."""
    underlying = getattr(exc, "kwargs", {}).get("error")
    text = f"{exc} {underlying}"
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "name not resolved"),
        ("Temporary failure in name resolution", "name not resolved"),
        ("Connection reset", "connection reset"),
    ):
        if marker in text:
            return reason
    return type(exc).__name__


def unreachable_endpoint(exc: BaseException) -> str:
    """``scheme://host:port`` of the endpoint a botocore connection error was about."""
    url = getattr(exc, "kwargs", {}).get("endpoint_url") or ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the endpoint"
