"""WebRTC ingestion from the master's side: JoinStorageSession.

A master of a channel whose media storage configuration is ENABLED calls
JoinStorageSession (``kinesis-video-webrtc-storage``, at the channel's ``WEBRTC``
endpoint) once it is connected to signaling; the service (or the emulator) then
offers to the master like a viewer and records what it receives into the stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvs_toolkit.errors import SignalingError

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.webrtc.client import ChannelEndpoint

__all__ = ["join_storage_session"]


def join_storage_session(aws: AwsAccess, endpoint: ChannelEndpoint) -> None:
    """Ask the service to join ``endpoint``'s channel as a recording peer (blocking)."""
    import botocore.exceptions

    if endpoint.webrtc_url is None:
        raise SignalingError(
            f"channel {endpoint.name}: media storage is not ENABLED (no WEBRTC endpoint)"
        )
    storage = aws.client("kinesis-video-webrtc-storage", endpoint_url=endpoint.webrtc_url)
    try:
        storage.join_storage_session(channelArn=endpoint.arn)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise SignalingError(f"channel {endpoint.name}: JoinStorageSession: {exc}") from exc
    finally:
        storage.close()
