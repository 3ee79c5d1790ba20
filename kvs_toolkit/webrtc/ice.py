"""ICE settings for peers on one machine: loopback host candidates, no STUN or TURN.

aioice gathers host candidates from every interface except loopback
(``aioice.ice.get_host_addresses`` skips 127.0.0.1 and ::1) and aiortc, given no
``iceServers``, adds Google's public STUN server. Neither has an option for a
loopback-only peer (checked in aioice 0.13 and aiortc 1.16: ``Connection`` takes no
address list), so :func:`use_host_addresses` replaces the module function aioice looks
the addresses up with by one that answers the configured list, and
:func:`rtc_configuration` passes ``iceServers=[]`` explicitly. Together they keep every
packet of a local session on 127.0.0.1 (the emulator tests run in a network namespace
with nothing but ``lo`` to prove it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiortc import RTCConfiguration, RTCIceServer

__all__ = ["LOOPBACK", "ice_servers_from_service", "rtc_configuration", "use_host_addresses"]

log = logging.getLogger(__name__)

#: Host addresses for a session between peers on this machine.
LOOPBACK: tuple[str, ...] = ("127.0.0.1",)


class _State:
    lock = threading.Lock()
    override: tuple[str, ...] | None = None
    installed = False


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather host candidates on exactly ``addresses`` (e.g. :data:`LOOPBACK`) in this
    process from now on; ``None`` restores aioice's own choice (every non-loopback
    interface). Process-wide, as aioice's lookup is."""
    import aioice.ice

    with _State.lock:
        _State.override = None if addresses is None else tuple(addresses)
        if not _State.installed:
            original = aioice.ice.get_host_addresses

            def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
                chosen = _State.override
                if chosen is None:
                    return original(use_ipv4, use_ipv6)
                return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

            aioice.ice.get_host_addresses = host_addresses
            _State.installed = True
    log.debug("ICE host addresses: %s", "interfaces" if addresses is None else list(addresses))


def rtc_configuration(ice_servers: Sequence[RTCIceServer] | None = None) -> RTCConfiguration:
    """An ``RTCConfiguration`` with exactly ``ice_servers`` (none by default: aiortc
    would otherwise contact a public STUN server)."""
    from aiortc import RTCConfiguration

    return RTCConfiguration(iceServers=list(ice_servers or []))


def ice_servers_from_service(servers: Sequence[dict[str, Any]]) -> list[RTCIceServer]:
    """GetIceServerConfig's ``IceServerList`` as aiortc ``RTCIceServer`` s."""
    from aiortc import RTCIceServer

    return [
        RTCIceServer(
            urls=list(s.get("Uris", [])), username=s.get("Username"), credential=s.get("Password")
        )
        for s in servers
        if s.get("Uris")
    ]
