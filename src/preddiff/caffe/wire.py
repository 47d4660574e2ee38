"""Protocol-buffer wire format: just enough to read and write Caffe's binary ``.caffemodel``.

Scope
-----
A ``.caffemodel`` is a serialised ``caffe.NetParameter`` message (``caffe.proto`` in
BVLC/caffe). Rather than depend on generated protobuf classes (and on a ``protoc`` matching
the installed protobuf runtime), this module decodes and encodes the wire format directly
(https://protobuf.dev/programming-guides/encoding/):

* a message is a sequence of fields, each a varint key ``(field_number << 3) | wire_type``
  followed by its payload;
* wire types used: 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit (3/4, the
  deprecated groups, never occur in Caffe files and are reported as corruption).

Speed
-----
Fields are walked in Python, but their number is small (a few per layer and blob). Float
arrays are never decoded element by element: a packed ``repeated float`` is one
length-delimited field whose payload :func:`numpy.frombuffer` views in place, and an
*unpacked* ``repeated float`` (one key per element, as very old writers produced) is
recognised as a run of equal keys by :meth:`FieldReader.take_run` with NumPy and read through
a strided view.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "VARINT", "FIXED64", "LENGTH", "FIXED32", "WireError", "Field", "FieldReader",
    "read_varint", "packed_varints", "Builder", "encode_varint", "encode_key",
]

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_FIXED_WIDTH = {FIXED32: 4, FIXED64: 8}


class WireError(ValueError):
    """The bytes are not a well-formed protocol-buffer message (corrupt or truncated)."""


class Field(NamedTuple):
    """One decoded field of a message.

    Attributes
    ----------
    number : int
        Field number.
    wire_type : int
        One of VARINT, FIXED64, LENGTH, FIXED32.
    value : int or None
        The decoded integer of a VARINT field, else None.
    start, end : int
        Byte range of the payload in the buffer (for VARINT: of the encoded varint).
    key_start : int
        Offset of the field's key (where a run of equal keys starts).
    """

    number: int
    wire_type: int
    value: int | None
    start: int
    end: int
    key_start: int


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos]``; return ``(value, position after it)``.

    Raises
    ------
    WireError
        The varint runs past ``end`` or is longer than 10 bytes.
    """
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError(f"varint runs past the end of the data at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes ending at byte {pos}")


class FieldReader:
    """Iterate over the fields of the message in ``buf[start:end]``.

    Parameters
    ----------
    buf : memoryview
        The whole file (offsets in the yielded fields are absolute).
    start, end : int
        Byte range of the message.

    Examples
    --------
    >>> buf = memoryview(Builder().varint(1, 150).to_bytes())
    >>> [(f.number, f.value) for f in FieldReader(buf, 0, len(buf))]
    [(1, 150)]
    """

    def __init__(self, buf: memoryview, start: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else end
        if not 0 <= start <= self.end <= len(buf):
            raise WireError(f"message range {start}..{end} outside the data ({len(buf)} bytes)")

    def __iter__(self):
        return self

    def __next__(self) -> Field:
        if self.pos >= self.end:
            raise StopIteration
        key_start = self.pos
        key, pos = read_varint(self.buf, self.pos, self.end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {key_start}")
        value = None
        if wire_type == VARINT:
            value, end = read_varint(self.buf, pos, self.end)
        elif wire_type == LENGTH:
            length, pos = read_varint(self.buf, pos, self.end)
            end = pos + length
        elif wire_type in _FIXED_WIDTH:
            end = pos + _FIXED_WIDTH[wire_type]
        else:
            raise WireError(f"wire type {wire_type} (field {number}) at byte {key_start}")
        if end > self.end:
            raise WireError(
                f"field {number} at byte {key_start} needs {end - pos} bytes but the "
                f"enclosing message ends {self.end - pos} bytes later"
            )
        self.pos = end
        return Field(number, wire_type, value, pos, end, key_start)

    def take_run(self, field: Field) -> tuple[int, int, int]:
        """Extend a just-read fixed-width ``field`` over the directly following fields that
        have the same key (an unpacked repeated float/double) and skip past them.

        Returns
        -------
        offset, count, stride : int
            Byte offset of the first value, number of values, distance between values.
        """
        width = _FIXED_WIDTH[field.wire_type]
        key = bytes(self.buf[field.key_start:field.start])
        stride = len(key) + width
        count = 1
        # Compare the keys of the following records in growing chunks, so that a short run
        # costs little and a long one is still checked with a handful of NumPy calls.
        chunk = 64
        while True:
            first = field.key_start + count * stride
            available = (self.end - first) // stride
            n = min(chunk, available)
            if n <= 0:
                break
            records = np.frombuffer(self.buf, np.uint8, count=n * stride, offset=first)
            keys = records.reshape(n, stride)[:, : len(key)]
            same = np.all(keys == np.frombuffer(key, np.uint8), axis=1)
            if same.all():
                count += n
                chunk *= 2
                continue
            count += int(np.argmin(same))
            break
        self.pos = field.key_start + count * stride
        return field.start, count, stride


def packed_varints(buf: memoryview, start: int, end: int) -> list[int]:
    """Decode the varints of a packed repeated integer field payload ``buf[start:end]``."""
    values = []
    while start < end:
        value, start = read_varint(buf, start, end)
        values.append(value)
    return values


def to_int64(value: int) -> int:
    """Interpret a decoded varint as a two's-complement int64 (negative dims, -1 markers)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """Varint encoding of a non-negative int, or of a negative one as a 10-byte int64."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    """The key of field ``number`` with ``wire_type``."""
    return encode_varint((number << 3) | wire_type)


class Builder:
    """A message under construction: a list of byte strings and arrays, written lazily.

    Large float arrays are kept as arrays and copied only when the message is written, so
    that writing a 500 MB caffemodel needs no second in-memory copy of the weights. Every
    method returns ``self`` so calls chain.
    """

    def __init__(self):
        self.parts: list[bytes | np.ndarray] = []
        self.size = 0

    def _add(self, part) -> None:
        self.parts.append(part)
        self.size += part.nbytes if isinstance(part, np.ndarray) else len(part)

    def varint(self, number: int, value: int) -> "Builder":
        """Add a varint field (int32/int64/uint/bool/enum)."""
        self._add(encode_key(number, VARINT) + encode_varint(int(value)))
        return self

    def string(self, number: int, value: str | bytes) -> "Builder":
        """Add a string or bytes field."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self._add(encode_key(number, LENGTH) + encode_varint(len(data)) + data)
        return self

    def message(self, number: int, sub: "Builder") -> "Builder":
        """Add an embedded message field."""
        self._add(encode_key(number, LENGTH) + encode_varint(sub.size))
        for part in sub.parts:
            self._add(part)
        return self

    def packed(self, number: int, values, dtype: str = "<f4") -> "Builder":
        """Add a packed repeated field of fixed-width numbers (``<f4``, ``<f8``)."""
        array = np.ascontiguousarray(values, dtype=dtype).ravel()
        self._add(encode_key(number, LENGTH) + encode_varint(array.nbytes))
        self._add(array)
        return self

    def packed_varints(self, number: int, values) -> "Builder":
        """Add a packed repeated varint field (e.g. ``BlobShape.dim``)."""
        payload = b"".join(encode_varint(int(v)) for v in values)
        self._add(encode_key(number, LENGTH) + encode_varint(len(payload)) + payload)
        return self

    def unpacked(self, number: int, values, dtype: str = "<f4") -> "Builder":
        """Add an *unpacked* repeated float/double field: one key per element."""
        array = np.asarray(values, dtype=dtype).ravel()
        wire_type = FIXED32 if array.itemsize == 4 else FIXED64
        key = encode_key(number, wire_type)
        records = np.empty(array.size, dtype=[("key", "u1", (len(key),)), ("v", dtype)])
        records["key"] = np.frombuffer(key, np.uint8)
        records["v"] = array
        self._add(records.view(np.uint8))
        return self

    def raw(self, data: bytes) -> "Builder":
        """Append already-encoded bytes (for tests that build malformed messages)."""
        self._add(bytes(data))
        return self

    def write(self, fh) -> None:
        """Write the encoded message to the binary file object ``fh``."""
        for part in self.parts:
            fh.write(memoryview(part).cast("B") if isinstance(part, np.ndarray) else part)

    def to_bytes(self) -> bytes:
        """The encoded message (copies everything; for small messages and tests)."""
        return b"".join(
            part.tobytes() if isinstance(part, np.ndarray) else part for part in self.parts
        )
