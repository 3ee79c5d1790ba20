"""EBML primitives: variable-size integers and element headers (RFC 8794).

Pure functions over ``bytes``-like objects; no I/O and no state.
"""

from __future__ import annotations

import struct
from typing import Final

from kvs_toolkit.errors import MkvError

# An element size whose value bits are all ones means "unknown size" (RFC 8794 6.2).
UNKNOWN_SIZE: Final = -1

# Length of a vint from its first byte: the position of the first set bit (RFC 8794 4).
_VINT_LENGTH: Final = bytes(
    [0] + [next(n for n in range(1, 9) if b & (0x80 >> (n - 1))) for b in range(1, 256)]
)


def vint_length(first_byte: int) -> int:
    """Length in bytes of the vint starting with ``first_byte``; 0 if invalid (0x00)."""
    return _VINT_LENGTH[first_byte]


def read_element_id(
    buf: bytes | bytearray | memoryview, pos: int, end: int, base: int = 0
) -> tuple[int, int]:
    """Read an element ID at ``pos``. Returns ``(id, length)``; length 0 means "need more".

    Element IDs keep their length marker bits, as Matroska writes them (0x1A45DFA3).
    Raises :class:`MkvError` (at offset ``base + pos``) for an invalid first byte or an
    ID longer than 4 bytes (EBMLMaxIDLength is 4 for Matroska).
    """
    if pos >= end:
        return 0, 0
    first = buf[pos]
    length = _VINT_LENGTH[first]
    if length == 0 or length > 4:
        raise MkvError(f"invalid element ID first byte 0x{first:02x}", base + pos)
    if pos + length > end:
        return 0, 0
    return int.from_bytes(buf[pos : pos + length], "big"), length


def read_size(
    buf: bytes | bytearray | memoryview, pos: int, end: int, base: int = 0
) -> tuple[int, int]:
    """Read an element data size at ``pos``. Returns ``(size, length)``.

    ``size`` is :data:`UNKNOWN_SIZE` when all value bits are set; ``length`` 0 means
    "need more bytes".
    """
    if pos >= end:
        return 0, 0
    first = buf[pos]
    length = _VINT_LENGTH[first]
    if length == 0:
        raise MkvError("invalid element size: first byte is 0x00", base + pos)
    if pos + length > end:
        return 0, 0
    value = int.from_bytes(buf[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return UNKNOWN_SIZE, length
    return value, length


def read_vint(
    buf: bytes | bytearray | memoryview, pos: int, end: int, base: int = 0
) -> tuple[int, int]:
    """Read an unsigned vint (marker bit removed). Raises :class:`MkvError` if truncated."""
    if pos >= end:
        raise MkvError("truncated variable-size integer", base + pos)
    length = _VINT_LENGTH[buf[pos]]
    if length == 0:
        raise MkvError("invalid variable-size integer: first byte is 0x00", base + pos)
    if pos + length > end:
        raise MkvError("truncated variable-size integer", base + pos)
    value = int.from_bytes(buf[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return value, length


def encode_id(element_id: int) -> bytes:
    """The bytes of an element ID (IDs keep their marker bits)."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(size: int, length: int | None = None) -> bytes:
    """Encode a data size as a vint, in the shortest form unless ``length`` is given."""
    if length is None:
        length = 1
        while size >= (1 << (7 * length)) - 1:  # all-ones is reserved for "unknown"
            length += 1
    if length > 8 or size >= (1 << (7 * length)) - 1:
        raise ValueError(f"size {size} does not fit in a {length}-byte vint")
    return ((1 << (7 * length)) | size).to_bytes(length, "big")


UNKNOWN_SIZE_BYTES: Final = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def element(element_id: int, payload: bytes) -> bytes:
    """A complete element: ID, size and payload."""
    return b"".join((encode_id(element_id), encode_size(len(payload)), payload))


def uint_element(element_id: int, value: int) -> bytes:
    """An unsigned integer element in the fewest bytes (at least one)."""
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def float_element(element_id: int, value: float) -> bytes:
    """A float element as an 8-byte IEEE 754 double."""
    return element(element_id, struct.pack(">d", value))


def string_element(element_id: int, value: str) -> bytes:
    """A UTF-8 string element."""
    return element(element_id, value.encode("utf-8"))


def decode_uint(data: bytes | memoryview, offset: int) -> int:
    """An unsigned integer element's value (0 to 8 bytes, big-endian)."""
    if len(data) > 8:
        raise MkvError(f"unsigned integer element of {len(data)} bytes (at most 8)", offset)
    return int.from_bytes(data, "big")


def decode_float(data: bytes | memoryview, offset: int) -> float:
    """A float element's value (0, 4 or 8 bytes)."""
    if len(data) == 0:
        return 0.0
    if len(data) == 4:
        return float(struct.unpack(">f", data)[0])
    if len(data) == 8:
        return float(struct.unpack(">d", data)[0])
    raise MkvError(f"float element of {len(data)} bytes (must be 0, 4 or 8)", offset)


def decode_string(data: bytes | memoryview) -> str:
    """A string/UTF-8 element's value, with trailing NUL padding removed."""
    return bytes(data).rstrip(b"\x00").decode("utf-8", errors="replace")


def iter_children(data: bytes | memoryview, base_offset: int) -> list[tuple[int, memoryview, int]]:
    """The children of a fully buffered, sized master element.

    Returns ``(id, payload view, absolute offset of the child)`` for each child. Raises
    :class:`MkvError` if a child overruns its parent or claims an unknown size.
    """
    view = memoryview(data)
    end = len(view)
    pos = 0
    children: list[tuple[int, memoryview, int]] = []
    while pos < end:
        element_id, id_len = read_element_id(view, pos, end, base_offset)
        if id_len == 0:
            raise MkvError("truncated element ID inside a master element", base_offset + pos)
        size, size_len = read_size(view, pos + id_len, end, base_offset)
        if size_len == 0:
            raise MkvError("truncated element size inside a master element", base_offset + pos)
        if size == UNKNOWN_SIZE:
            raise MkvError(
                f"element 0x{element_id:X} has unknown size inside a sized master",
                base_offset + pos,
            )
        data_start = pos + id_len + size_len
        if data_start + size > end:
            raise MkvError(
                f"element 0x{element_id:X} of {size} bytes overruns its parent",
                base_offset + pos,
            )
        children.append((element_id, view[data_start : data_start + size], base_offset + pos))
        pos = data_start + size
    return children
