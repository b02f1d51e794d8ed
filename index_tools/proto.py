"""tf.train.Example / SequenceExample on the wire, without TensorFlow.

Encoding gives the byte offset of every value of a bytes feature (so the writer knows where each
JPEG lands); walking an existing record finds them again (so indexes can be built for files other
tools wrote). Only the subset of protobuf that these messages use is handled:

  Example         { Features features = 1; }
  SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
  Features        { map<string, Feature> feature = 1; }        (map entry: key = 1, value = 2)
  FeatureLists    { map<string, FeatureList> feature_list = 1; }
  FeatureList     { repeated Feature feature = 1; }
  Feature         { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
"""
from __future__ import annotations

import struct

from .format import FormatError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_prefix(field: int, size: int) -> bytes:
    return _varint(field << 3 | _LEN) + _varint(size)


def encode_example(features: dict, track: str | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """Serialise ``{key: list of bytes | list of int | list of float}`` as a tf.train.Example.

    Returns the bytes and, for the bytes feature ``track``, ``(offset, length)`` of each value in them.
    Keys are written in sorted order, so equal input gives equal bytes.
    """
    entries = []  # (entry prefix, list of chunks, index of tracked values or None)
    for key in sorted(features):
        values = list(features[key])
        if values and isinstance(values[0], (bytes, bytearray, memoryview)):
            chunks = [c for v in values for c in (_len_prefix(1, len(v)), v)]
            kind = 1
        elif values and isinstance(values[0], float):
            chunks = [struct.pack(f"<{len(values)}f", *values)]
            chunks.insert(0, _len_prefix(1, len(chunks[0])))
            kind = 2
        else:
            packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in values)
            chunks = [_len_prefix(1, len(packed)), packed] if values else []
            kind = 3
        list_size = sum(len(c) for c in chunks)
        feature = _len_prefix(kind, list_size)
        key_bytes = key.encode()
        key_part = _len_prefix(1, len(key_bytes)) + key_bytes
        value_size = len(feature) + list_size
        entry_size = len(key_part) + len(_len_prefix(2, value_size)) + value_size
        prefix = _len_prefix(1, entry_size) + key_part + _len_prefix(2, value_size) + feature
        entries.append((prefix, chunks, key == track and kind == 1))
    body_size = sum(len(p) + sum(len(c) for c in ch) for p, ch, _ in entries)
    parts = [_len_prefix(1, body_size)]
    pos = len(parts[0])
    spans = []
    for prefix, chunks, tracked in entries:
        parts.append(prefix)
        pos += len(prefix)
        for i, chunk in enumerate(chunks):
            if tracked and i % 2 == 1:
                spans.append((pos, len(chunk)))
            parts.append(chunk)
            pos += len(chunk)
    return b"".join(parts), spans


# ---------------------------------------------------------------- walking

def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise FormatError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise FormatError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf, start: int, end: int):
    """Yield ``(field, wire_type, value_or_start, value_end)`` for each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise FormatError(f"field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield field, wire, value, pos
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            if size > end - pos:
                raise FormatError(f"length {size} at byte {pos} runs past the end of its message ({end})")
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise FormatError(f"truncated fixed-width field at byte {pos}")
            yield field, wire, pos, pos + size
            pos += size
        else:
            raise FormatError(f"unsupported wire type {wire} at byte {pos}")


def _to_signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf, start: int, end: int):
    """A Feature as ``("bytes", [(offset, length), ...])``, ``("int64", [...])`` or ``("float", [...])``."""
    kind, values = "bytes", []
    for field, wire, a, b in _fields(buf, start, end):
        if wire != _LEN or field not in (1, 2, 3):
            raise FormatError(f"Feature field {field} (wire {wire}) at byte {a} is not a value list")
        kind = {1: "bytes", 2: "float", 3: "int64"}[field]
        for f, w, x, y in _fields(buf, a, b):
            if f != 1:
                raise FormatError(f"value list has field {f} at byte {x}")
            if kind == "bytes":
                if w != _LEN:
                    raise FormatError(f"bytes value with wire type {w} at byte {x}")
                values.append((x, y - x))
            elif kind == "int64":
                if w == _VARINT:
                    values.append(_to_signed(x))
                elif w == _LEN:
                    p = x
                    while p < y:
                        v, p = _read_varint(buf, p, y)
                        values.append(_to_signed(v))
                else:
                    raise FormatError(f"int64 value with wire type {w} at byte {x}")
            else:
                if w == _I32:
                    values.append(struct.unpack_from("<f", buf, x)[0])
                elif w == _LEN and (y - x) % 4 == 0:
                    values.extend(struct.unpack_from(f"<{(y - x) // 4}f", buf, x))
                else:
                    raise FormatError(f"float value with wire type {w} at byte {x}")
    return kind, values


def _map(buf, start: int, end: int, value_parser) -> dict:
    out = {}
    for field, wire, a, b in _fields(buf, start, end):
        if field != 1 or wire != _LEN:
            raise FormatError(f"map field {field} (wire {wire}) at byte {a}")
        key, value = None, (a, a)
        for f, w, x, y in _fields(buf, a, b):
            if f == 1 and w == _LEN:
                try:
                    key = bytes(buf[x:y]).decode()
                except UnicodeDecodeError:
                    raise FormatError(f"map key at byte {x} is not UTF-8") from None
            elif f == 2 and w == _LEN:
                value = (x, y)
            else:
                raise FormatError(f"map entry field {f} (wire {w}) at byte {x}")
        if key is None:
            raise FormatError(f"map entry without key at byte {a}")
        out[key] = value_parser(buf, *value)
    return out


def _feature_list(buf, start: int, end: int) -> list:
    out = []
    for field, wire, a, b in _fields(buf, start, end):
        if field != 1 or wire != _LEN:
            raise FormatError(f"FeatureList field {field} (wire {wire}) at byte {a}")
        out.append(_feature(buf, a, b))
    return out


def walk(buf) -> tuple[dict, dict]:
    """Parse an Example or SequenceExample: ``(features, feature_lists)``.

    ``features`` maps key -> (kind, values) (the context of a SequenceExample); bytes values are
    ``(offset, length)`` within ``buf``. ``feature_lists`` maps key -> list of such features.
    """
    features, lists = {}, {}
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if wire != _LEN or field not in (1, 2):
            raise FormatError(f"not a tf.train.Example: top-level field {field} (wire {wire}) at byte {a}")
        if field == 1:
            features.update(_map(buf, a, b, _feature))
        else:
            lists.update(_map(buf, a, b, _feature_list))
    return features, lists
