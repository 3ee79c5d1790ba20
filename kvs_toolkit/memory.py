"""Large frame buffers and glibc's allocator.

A decoded 1080p BGR frame is a 6 MB buffer, allocated by swscale for every frame and
freed when the consumer drops it. glibc serves an allocation that large with a fresh
``mmap`` unless its dynamic threshold has already been raised by an earlier free of
one, and gives the top of its heap back to the system once more than the trim threshold
is free there. Which of the two happens depends on what the process allocated before,
so the same decode could fault in every frame's 1,500 pages anew: measured here, 1.1 s
of system time in 2.3 s for 600 frames of 1080p, against 0.1 s with the buffers reused.

:func:`reuse_frame_buffers` fixes both thresholds at 32 MB (glibc's ceiling for the
mmap threshold, above a 4K BGR frame's 25 MB), so frame buffers come from the heap and
go back to it, where the next frame finds them with their pages still mapped. The
process's peak memory barely moves (a freed buffer is reused, not kept beside the
next). It is process-wide, so it is done once, only on glibc, and never when the user
has set the thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), which always win.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from typing import Final

__all__ = ["FRAME_BUFFER_THRESHOLD", "reuse_frame_buffers"]

log = logging.getLogger(__name__)

#: The mmap and trim thresholds set: glibc's largest mmap threshold on 64-bit
#: (DEFAULT_MMAP_THRESHOLD_MAX, 4 * 1024 * 1024 * sizeof(long)).
FRAME_BUFFER_THRESHOLD: Final = 32 * 1024 * 1024
# mallopt() parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_USER_SETTINGS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache  # once per process (a second, concurrent first call sets the same values)
def reuse_frame_buffers() -> bool:
    """Make glibc keep large freed buffers for reuse (see the module docstring); True
    when the thresholds are set (now or by an earlier call), False where it does not
    apply (not glibc, or the user set them)."""
    return _set_thresholds()


def _set_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        log.debug("malloc thresholds left as the environment sets them")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    done = bool(mallopt(_M_MMAP_THRESHOLD, FRAME_BUFFER_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, FRAME_BUFFER_THRESHOLD)
    )
    log.debug("malloc mmap and trim thresholds set to %d bytes: %s", FRAME_BUFFER_THRESHOLD, done)
    return done
