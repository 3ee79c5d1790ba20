"""Service errors the emulator answers with, shaped like the real service's.

A :class:`ServiceError` is not a failure of the emulator: it is an answer. The HTTP
layer turns it into the service's error shape, ``{"Message": ...}`` with the header
``x-amzn-ErrorType: <code>`` and the status of the error shape in the botocore service
models (``botocore/data/kinesisvideo/2017-09-30/service-2.json`` and the two media
models), so botocore raises the same exception classes it raises against AWS.

The store raises these too (for example :class:`ResourceNotFoundError` when a stream
does not exist), so a handler can let them propagate.
"""

from __future__ import annotations

from typing import ClassVar

from kvs_toolkit.errors import EmulatorError

__all__ = [
    "AccessDeniedError",
    "AccountStreamLimitExceededError",
    "ClientLimitExceededError",
    "InvalidArgumentError",
    "NotAuthorizedError",
    "RequestTimeoutError",
    "ResourceInUseError",
    "ResourceNotFoundError",
    "SerializationError",
    "ServiceError",
    "TagsPerResourceExceededLimitError",
    "UnknownOperationError",
    "VersionMismatchError",
]


class ServiceError(EmulatorError):
    """An error answer of the emulated service: ``code`` (x-amzn-ErrorType) and HTTP ``status``.

    ``message_key`` is the JSON member the message goes in: the service's modelled
    errors use ``Message``; the AWS front end's authentication errors use ``message``.
    """

    code: ClassVar[str] = "InternalFailure"
    status: ClassVar[int] = 500
    message_key: ClassVar[str] = "Message"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"{self.code}: {message}")


class ResourceNotFoundError(ServiceError):
    code = "ResourceNotFoundException"
    status = 404


class ResourceInUseError(ServiceError):
    code = "ResourceInUseException"
    status = 400


class InvalidArgumentError(ServiceError):
    code = "InvalidArgumentException"
    status = 400


class ClientLimitExceededError(ServiceError):
    code = "ClientLimitExceededException"
    status = 400


class NotAuthorizedError(ServiceError):
    code = "NotAuthorizedException"
    status = 401


class VersionMismatchError(ServiceError):
    code = "VersionMismatchException"
    status = 400


class TagsPerResourceExceededLimitError(ServiceError):
    code = "TagsPerResourceExceededLimitException"
    status = 400


class AccountStreamLimitExceededError(ServiceError):
    code = "AccountStreamLimitExceededException"
    status = 400


class SerializationError(ServiceError):
    """A request body that is not a JSON object (the AWS JSON protocols' error name)."""

    code = "SerializationException"
    status = 400


class UnknownOperationError(ServiceError):
    """No operation at this path (the AWS front end's answer to an unknown URI)."""

    code = "UnknownOperationException"
    status = 404
    message_key = "message"


class AccessDeniedError(ServiceError):
    """A request the emulator will not serve (a page request under a foreign Host name)."""

    code = "AccessDeniedException"
    status = 403


class RequestTimeoutError(ServiceError):
    """A request whose body stopped arriving (the AWS front end's RequestTimeout)."""

    code = "RequestTimeoutException"
    status = 408
