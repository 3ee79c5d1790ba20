"""The exception tree of kvs-toolkit.

Every error the package raises on purpose derives from :class:`KvsError`, so a caller
can catch the whole toolkit with one ``except``. Errors from lower libraries (sockets,
botocore, PyAV) are translated at the boundary with ``raise ... from exc``.

::

    KvsError
    ├── MkvError                  malformed, truncated or over-limit MKV/EBML input
    ├── FragmentMetadataError     fragment metadata that breaks the service's limits
    ├── BitstreamError            malformed H.264/H.265 elementary stream or parameter sets
    ├── PutMediaError             a PutMedia upload failed (HTTP status or ERROR ack)
    ├── CredentialsError          AWS credentials could not be obtained (IoT provider, profile)
    ├── ConfigurationError        set up wrongly: no region against AWS, a bad endpoint URL
    ├── EndpointUnreachableError  an endpoint did not answer within the retry policy
    ├── SpoolError                the producer's on-disk spool cannot be used
    ├── GetMediaError             a GetMedia read failed (HTTP status or error tags)
    │   └── NoFragmentsError      an existing stream has no fragments in the range
    ├── CheckpointError           a consumer checkpoint could not be read or written
    │   └── LeaseLostError        another consumer took over this stream's lease
    ├── DecodeError               a track cannot be decoded (codec or CodecPrivate)
    ├── SourceError               a producer's frame source cannot be opened or read
    ├── EncodeError               the producer's video encoder failed
    ├── AnalysisError             a detector or result sink failed (RekognitionError, SinkError)
    └── EmulatorError             the local emulator could not start or serve
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "BitstreamError",
    "CheckpointError",
    "ConfigurationError",
    "CredentialsError",
    "DecodeError",
    "EmulatorError",
    "EncodeError",
    "EndpointUnreachableError",
    "FragmentMetadataError",
    "GetMediaError",
    "KvsError",
    "LeaseLostError",
    "MkvError",
    "NoFragmentsError",
    "PutMediaError",
    "SignalingError",
    "SourceError",
    "SpoolError",
]


class KvsError(Exception):
    """Base class of every error kvs-toolkit raises."""


class MkvError(KvsError):
    """Malformed, truncated or over-limit MKV/EBML input.

    ``offset`` is the absolute byte offset in the input where the problem was found
    (``None`` when no single offset applies).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte offset {offset})")


class FragmentMetadataError(KvsError):
    """Fragment metadata that the service would refuse (ErrorId 4009 on PutMedia)."""


class BitstreamError(KvsError):
    """A malformed H.264/H.265 elementary stream, NAL unit or parameter set."""


class PutMediaError(KvsError):
    """A PutMedia upload failed: an HTTP error, or an ERROR acknowledgement."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_id: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.status = status
        self.error_id = error_id
        self.error_code = error_code
        super().__init__(message)


class CredentialsError(KvsError):
    """AWS credentials could not be obtained: the AWS IoT credentials provider refused
    or could not be reached (TLS, HTTP status, a malformed answer), a certificate or
    key file is unusable, or the credential options are incomplete.

    ``status`` is the provider's HTTP status when it answered one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ConfigurationError(KvsError):
    """The command or library was set up wrongly: no AWS region against AWS, an
    endpoint URL that is not one, options that contradict each other."""


class EndpointUnreachableError(KvsError):
    """An endpoint could not be reached within the retry policy's attempts."""


class SpoolError(KvsError):
    """The producer's on-disk spool directory cannot be used (not a directory, not
    writable, another stream's), or one spooled file cannot be read back."""


class GetMediaError(KvsError):
    """A GetMedia (or archived media) read failed."""

    def __init__(self, message: str, *, error_id: int | None = None) -> None:
        self.error_id = error_id
        super().__init__(message)


class NoFragmentsError(GetMediaError):
    """The stream exists but holds no fragments in the requested range (HLS, DASH,
    GetClip and GetImages answer ResourceNotFoundException for it)."""


class DecodeError(KvsError):
    """A track cannot be decoded: unsupported codec or unusable CodecPrivate.

    Corrupt *frames* never raise; they are logged, counted and skipped.
    """


class SourceError(KvsError):
    """A frame source could not be opened or read (missing file, no video, bad device)."""


class EncodeError(KvsError):
    """The video encoder could not be opened or failed on a frame."""


class CheckpointError(KvsError):
    """A consumer checkpoint could not be read or written."""


class LeaseLostError(CheckpointError):
    """This consumer no longer holds the stream's lease: another one took it over."""


class AnalysisError(KvsError):
    """A detector or result sink cannot be set up or has failed (missing model file or
    optional package, a service error after retries, an undeliverable result)."""


class EmulatorError(KvsError):
    """The local KVS emulator could not start, or was used wrongly."""


class SignalingError(KvsError):
    """KVS WebRTC signaling failed: the channel or endpoint was refused, the connection
    could not be (re)opened within the retry policy, or a peer connection failed."""
