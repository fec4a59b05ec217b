"""Mutations: byte-level ones for any file, and structure-aware ones that keep the outer format
valid (CRCs, lengths) so that the damage reaches the inner parsers.

Every mutator is `fn(rng, data) -> data` on bytes (rng: a random.Random) or, for the
structure-aware ones of a format, on that format's parsed form (formats.py). Nothing here
imports minivit: these are the tools a hostile file is made with.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import struct
import warnings
import zipfile
import zlib

# ---- values -------------------------------------------------------------------------------------
INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1000, 1024,
                    4096, 32767, 32768, 65535, 65536, 2 ** 24, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
                    2 ** 32, 2 ** 40, 2 ** 53, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 10 ** 12)
JSON_ATOMS = (None, True, False, 0, 1, -1, 2, 3, 8, 255, 65536, 2 ** 31, 2 ** 53 + 1, 2 ** 63,
              2 ** 64, 10 ** 30, -10 ** 30, 10 ** 100, 0.0, -0.0, 0.5, 1.5, -2.5, 1e-300, 1e300,
              float("inf"), float("-inf"), float("nan"), "", "a", "0", "8", "gelu", "token", "avg",
              "F32", "vit", "null", "\u00e9", "../x", "model.safetensors")


def json_value(rng: random.Random, depth: int = 0):
    """A JSON value of any type: atoms that break parsers (zero, negative, huge, NaN, wrong
    types), lists and objects (nested a little)."""
    r = rng.random()
    if r < 0.6 or depth >= 3:
        return rng.choice(JSON_ATOMS) if rng.random() < 0.85 else rng.randint(-5, 40)
    if r < 0.8:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("a", "height", "width", "shortest_edge", "0", "1", "weight", "dtype", "shape")
    return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


# ---- bytes --------------------------------------------------------------------------------------
def bitflip(rng, data: bytes) -> bytes:
    if not data:
        return b"\x01"
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate(rng, data: bytes) -> bytes:
    if not data:
        return data
    r = rng.random()
    n = (rng.randrange(len(data)) if r < 0.5 else len(data) - rng.randint(1, min(64, len(data)))
         if r < 0.8 else rng.randint(0, min(64, len(data) - 1)))
    return data[:n]


def overwrite(rng, data: bytes) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    i = rng.randrange(len(b))
    r = rng.random()
    if r < 0.4:                                           # an interesting integer, any width
        width, order = rng.choice((1, 2, 4, 8)), rng.choice("<>")
        v = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
        chunk = v.to_bytes(width, "little" if order == "<" else "big")
    elif r < 0.7:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        chunk = bytes([rng.choice((0, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x28, 0x5B, 0x7B))])
        chunk *= rng.randint(1, 8)
    b[i:i + len(chunk)] = chunk
    return bytes(b[:max(len(data), i + len(chunk))])


def insert(rng, data: bytes) -> bytes:
    i = rng.randint(0, len(data))
    if rng.random() < 0.5 and data:                       # a copy of a span of the file
        j = rng.randrange(len(data))
        chunk = data[j:j + rng.randint(1, 64)]
    else:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return data[:i] + chunk + data[i:]


def delete(rng, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64):]


BYTE_MUTATORS = {"bitflip": bitflip, "truncate": truncate, "overwrite": overwrite,
                 "insert": insert, "delete": delete}


# ---- text ---------------------------------------------------------------------------------------
TEXT_PIECES = ("(", ")", "[", "]", "{", "}", "'", '"', ",", ":", "\n", "\\", "L", "1L", " ",
               "-", "1e999", "0x7fffffff", "True", "None", "()", "((", "'''", "#", "\t", "\x00",
               "\xff", "__import__('os')", "lambda: 0", "b'x'", "1j", "{1, 2}", "...")


def text_edit(rng, s: str) -> str:
    """A small edit of a text: delete, insert or replace a span with a syntax-breaking piece."""
    if not s:
        return rng.choice(TEXT_PIECES)
    i = rng.randrange(len(s))
    r = rng.random()
    if r < 0.3:
        return s[:i] + s[i + rng.randint(1, 8):]
    piece = rng.choice(TEXT_PIECES)
    if r < 0.7:
        return s[:i] + piece + s[i:]
    return s[:i] + piece + s[i + len(piece):]


# ---- .npy ---------------------------------------------------------------------------------------
NPY_MAGIC = b"\x93NUMPY"
DESCRS = ("<f4", "<f8", ">f4", ">f8", "<f2", "|u1", "|i1", "<i2", "<i4", "<i8", "<u4", "|b1",
          "<f16", "<c8", "<c16", "<U3", "|S4", "|O", "|V8", "<M8[s]", "<m8[D]", "f4,f4", "(2,)f4",
          "i9", "", "garbage", "<f4\x00", "float32", "d", "?", "O")


def npy_parse(data: bytes):
    """(version, header text, payload) of a .npy stream, or None when it has no valid frame."""
    if data[:6] != NPY_MAGIC or len(data) < 10:
        return None
    version = (data[6], data[7])
    if version[0] == 1:
        (n,), start = struct.unpack("<H", data[8:10]), 10
    elif len(data) >= 12:
        (n,), start = struct.unpack("<I", data[8:12]), 12
    else:
        return None
    return version, data[start:start + n].decode("latin1"), data[start + n:]


def npy_frame(version, header: str, payload: bytes, length=None) -> bytes:
    raw = header.encode("latin1", "replace")
    n = len(raw) if length is None else length
    size = struct.pack("<H", n % 65536) if version[0] == 1 else struct.pack("<I", n % 2 ** 32)
    return NPY_MAGIC + bytes(version) + size + raw + payload


def npy_header(descr, fortran, shape) -> str:
    return "{" + f"'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, " + "}"


def _literal(rng):
    """A Python literal of any kind, for a header field."""
    return rng.choice((None, True, False, 0, -1, 1.5, "2", [2, 3], (2.0,), {}, (None,), 10 ** 12,
                       -(2 ** 63), 2 ** 64, "f4", b"x", (1, 2, (3,)), ()))


def npy_mutate(rng, data: bytes) -> bytes:
    """A structure-aware edit of a .npy stream: shape, dtype, fortran_order, the dict text, the
    header length, the version or the payload."""
    parsed = npy_parse(data)
    if parsed is None:
        return bitflip(rng, data)
    version, header, payload = parsed
    try:
        import ast
        d = ast.literal_eval(header)
        descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    except Exception:
        descr, fortran, shape = "<f4", False, (len(payload) // 4,)
    kind = rng.choice(("shape", "shape", "descr", "descr", "fortran", "text", "text", "text",
                       "structure", "length", "version", "payload", "deep"))
    length = None
    if kind == "shape":
        r = rng.random()
        if r < 0.05:                                      # more dimensions than numpy has
            shape = (0,) * rng.choice((33, 64, 65, 100)) + (1,) * rng.randint(0, 2)
        elif r < 0.5:
            n = rng.randint(0, 4)
            vals = [rng.choice(INTERESTING_INTS + (-1, -2, -(2 ** 63), 0)) for _ in range(n)]
            if rng.random() < 0.3 and vals:
                vals[rng.randrange(len(vals))] = _literal(rng)
            shape = tuple(vals)
        elif r < 0.8 and isinstance(shape, tuple) and shape:
            shape = list(shape)
            i = rng.randrange(len(shape))
            shape[i] = rng.choice((0, 1, shape[i] + 1, shape[i] * 2, -shape[i], 2 ** 62, True))
            shape = tuple(shape)
        else:
            shape = _literal(rng)
        header = npy_header(descr, fortran, shape)
    elif kind == "descr":
        r = rng.random()
        descr = (rng.choice(DESCRS) if r < 0.75 else
                 [("a", "<f4"), ("b", "<i4")] if r < 0.85 else ("<f4", (2,)) if r < 0.9
                 else _literal(rng))
        header = npy_header(descr, fortran, shape)
    elif kind == "fortran":
        header = npy_header(descr, rng.choice((True, False, 1, 0, None, "True", [])), shape)
    elif kind == "text":
        for _ in range(rng.randint(1, 3)):
            header = text_edit(rng, header)
    elif kind == "structure":
        d = {"descr": descr, "fortran_order": fortran, "shape": shape}
        r = rng.random()
        if r < 0.3:
            d.pop(rng.choice(list(d)))
        elif r < 0.5:
            d[rng.choice(("extra", "Shape", 0))] = 1
        if r < 0.7:
            header = repr(d)
        else:
            header = rng.choice(("[1, 2]", "()", "None", "'descr'", "{}", "{'descr': '<f4'",
                                 "{'shape': (3L, 4L), 'fortran_order': False, 'descr': '<f4'}",
                                 "{'descr': '<f4', 'fortran_order': False, 'shape': (2,"
                                 + "(" * 5, "{'descr': '<f4', 'fortran_order': False, "
                                 "'shape': (" + "9" * 5000 + ",)}"))
    elif kind == "deep":
        depth = rng.choice((50, 100, 199, 200, 201, 500, 1000, 3000))
        ch = rng.choice(("(", "[", "{", "-", "not ", "+"))
        closing = {"(": ")", "[": "]", "{": "}"}.get(ch, "")
        inner = ch * depth + "1" + closing * (depth if rng.random() < 0.7 else depth // 2)
        header = npy_header(descr, fortran, shape)[:-1] + f"'x': {inner}" + "}"
        if rng.random() < 0.5:
            header = inner
    elif kind == "length":
        length = rng.choice((0, 1, len(header) - 1, len(header) + 1, len(header) + 64,
                             rng.randrange(1 << 16), 2 ** 32 - 1, 65535))
    elif kind == "version":
        version = rng.choice(((1, 0), (2, 0), (3, 0), (0, 0), (1, 1), (255, 255), (2, 1)))
    else:
        payload = rng.choice((payload[:rng.randint(0, len(payload))], payload + b"\x00" * 4,
                              payload + payload, b"", payload[1:]))
    return npy_frame(version, header, payload, length)


# ---- zip (.npz) ---------------------------------------------------------------------------------
def zip_members(data: bytes) -> list:
    """[(name, bytes, compress_type)] of a zip archive, in order."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]


def zip_build(members: list) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")                   # a doubled member is on purpose
        for name, payload, method in members:
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), payload,
                        compress_type=method)
    return buf.getvalue()


def zip_fields(rng, data: bytes) -> bytes:
    """Overwrite one field of the central directory, a local header or the end record with an
    interesting value (lengths, offsets, counts, methods, flags)."""
    b = bytearray(data)
    eocd = b.rfind(b"PK\x05\x06")
    if eocd < 0:
        return overwrite(rng, data)
    where = rng.random()
    if where < 0.2:                                       # end of central directory
        off = eocd + rng.choice((8, 10, 12, 16, 20))
        width = 2 if off - eocd in (8, 10, 20) else 4
    else:
        sig = b"PK\x01\x02" if where < 0.7 else b"PK\x03\x04"
        starts = []
        i = b.find(sig)
        while i >= 0:
            starts.append(i)
            i = b.find(sig, i + 1)
        if not starts:
            return overwrite(rng, data)
        s = rng.choice(starts)
        fields = ({8: 2, 10: 2, 16: 4, 20: 4, 24: 4, 28: 2, 30: 2, 32: 2, 42: 4} if sig == b"PK\x01\x02"
                  else {6: 2, 8: 2, 14: 4, 18: 4, 22: 4, 26: 2, 28: 2})
        rel = rng.choice(list(fields))
        off, width = s + rel, fields[rel]
    v = rng.choice(INTERESTING_INTS + (12, 14, 99, 0x800, 0x41)) % (1 << (8 * width))
    if rng.random() < 0.3:
        cur = int.from_bytes(b[off:off + width], "little")
        v = (cur + rng.choice((-1, 1, -16, 16, 4096))) % (1 << (8 * width))
    b[off:off + width] = v.to_bytes(width, "little")
    return bytes(b)


def zip_mutate(rng, data: bytes, member_mutators: dict) -> bytes:
    """A structure-aware edit of an .npz: one member through a member mutator (its CRC made
    right again), members dropped, doubled, renamed or recompressed, or a zip field."""
    try:
        members = zip_members(data)
    except Exception:
        return bitflip(rng, data)
    if not members:
        return data
    r = rng.random()
    if r < 0.15:
        return zip_fields(rng, data)
    members = list(members)
    i = rng.randrange(len(members))
    name, payload, method = members[i]
    if r < 0.7:
        fn = member_mutators.get(name) or member_mutators.get("*")
        members[i] = (name, fn(rng, payload), method)
    elif r < 0.78:
        del members[i]
    elif r < 0.84:
        members.insert(rng.randrange(len(members) + 1), (name, payload, method))
    elif r < 0.9:
        other = rng.choice(("x.npy", name[:-4], name + ".npy", "", "meta.npy", "../" + name,
                            members[rng.randrange(len(members))][0], "\u00e9.npy"))
        members[i] = (other, payload, method)
    elif r < 0.96:
        members = [(n, p, zipfile.ZIP_DEFLATED if m == zipfile.ZIP_STORED else zipfile.ZIP_STORED)
                   for n, p, m in members]
    else:
        members[i] = (name, payload, rng.choice((zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)))
    return zip_build(members)


# ---- safetensors --------------------------------------------------------------------------------
ST_DTYPES = ("F32", "F64", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "C64",
             "f32", "", "STR")


def st_parse(data: bytes):
    """(header dict, data bytes) of a safetensors file, or None."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except Exception:
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def st_build(header, payload: bytes, length=None, raw: bytes = None) -> bytes:
    head = dumps(header) if raw is None else raw
    return struct.pack("<Q", len(head) if length is None else length) + head + payload


def st_mutate(rng, data: bytes) -> bytes:
    """A structure-aware edit of a safetensors file: shapes, dtypes, offsets (outside, swapped,
    overlapping), __metadata__ of every JSON type, entries of the wrong type, the length field,
    the header text or the data."""
    parsed = st_parse(data)
    if parsed is None:
        return bitflip(rng, data)
    header, payload = parsed
    names = [k for k in header if k != "__metadata__"]
    kind = rng.choice(("shape", "shape", "dtype", "offsets", "offsets", "overlap", "metadata",
                       "entry", "drop", "rename", "length", "text", "payload", "header"))
    name = rng.choice(names) if names else "x"
    e = dict(header.get(name) or {}) if isinstance(header.get(name), dict) else {}
    length, raw = None, None
    if kind == "shape":
        shape = list(e.get("shape") or [])
        r = rng.random()
        if r < 0.4 and shape:
            j = rng.randrange(len(shape))
            shape[j] = rng.choice((0, 1, -1, shape[j] + 1, shape[j] * 2, 2 ** 63, 2 ** 64,
                                   10 ** 20, 1.0, "2", None, True))
        elif r < 0.7:
            shape = [rng.choice((0, 1, 2, 3, 4, 8, 12, 24, 2 ** 31, 2 ** 62)) for _ in
                     range(rng.randint(0, 5))]
            if rng.random() < 0.1:                        # more dimensions than numpy has
                shape = [0] * rng.choice((33, 65, 100))
        else:
            shape = json_value(rng)
        e["shape"] = shape
        header[name] = e
    elif kind == "dtype":
        e["dtype"] = rng.choice(ST_DTYPES) if rng.random() < 0.8 else json_value(rng)
        header[name] = e
    elif kind == "offsets":
        b0, b1 = (e.get("data_offsets") or [0, 0]) if isinstance(e.get("data_offsets"), list) \
            else (0, 0)
        r = rng.random()
        if r < 0.6:
            offs = [rng.choice((b0, b1, 0, -1, b0 + 1, b1 - 1, b1 + 4, len(payload),
                                len(payload) + 1, 2 ** 63, 2 ** 64, 1.5)),
                    rng.choice((b0, b1, 0, b1 + 4, b1 - 4, len(payload), len(payload) + 8,
                                2 ** 64 + b0, "4"))]
        elif r < 0.8:
            offs = [b1, b0]
        else:
            offs = json_value(rng)
        e["data_offsets"] = offs
        header[name] = e
    elif kind == "overlap" and len(names) >= 2:
        a, b = rng.sample(names, 2)
        if isinstance(header[a], dict) and isinstance(header[b], dict):
            header[a] = dict(header[a], data_offsets=header[b].get("data_offsets"))
    elif kind == "metadata":
        header["__metadata__"] = json_value(rng) if rng.random() < 0.6 else \
            {"format": json_value(rng), rng.choice(("a", "format", "")): json_value(rng)}
    elif kind == "entry":
        header[name] = json_value(rng)
    elif kind == "drop" and names:
        del header[name]
    elif kind == "rename" and names:
        header[rng.choice(("x", name + ".", "", "__metadata__", rng.choice(names)))] = \
            header.pop(name)
    elif kind == "length":
        n = len(dumps(header))
        length = rng.choice((0, 1, 7, n - 1, n + 1, n + 8, len(data), 2 ** 32, 2 ** 63,
                             2 ** 64 - 1, 100_000_001))
    elif kind == "text":
        raw = text_edit(rng, json.dumps(header)).encode("utf-8", "surrogatepass")
    elif kind == "payload":
        payload = rng.choice((payload[:rng.randint(0, len(payload))], payload + b"\x00" * 8, b""))
    else:
        raw = dumps(json_value(rng)) if rng.random() < 0.6 else \
            rng.choice((b"", b" " * 8, b"\xff\xfe", b"{" * 100000, b"[" * 3000 + b"]" * 3000,
                        b'{"a": ' * 2000))
    return st_build(header, payload, length, raw)


# ---- JSON documents -----------------------------------------------------------------------------
def json_mutate(rng, data: bytes, keys=()) -> bytes:
    """A JSON object with one key (existing, at any depth, or one of `keys` the reader looks
    for) set to a value of any type, or removed; or the document replaced by another type."""
    try:
        doc = json.loads(data)
    except Exception:
        return bitflip(rng, data)
    r = rng.random()
    if r < 0.08:
        return dumps(json_value(rng))
    if r < 0.12:
        depth = rng.choice((100, 1000, 100000))
        return rng.choice((b"[" * depth + b"]" * depth, b'{"a":' * depth, b"[" * depth))
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for j, v in enumerate(node):
                paths.append(path + (j,))
                walk(v, path + (j,))
    walk(doc, ())
    if keys and (rng.random() < 0.4 or not paths):
        path = rng.choice(keys)
        path = tuple(path.split(".")) if isinstance(path, str) else path
    elif paths:
        path = rng.choice(paths)
    else:
        return dumps(json_value(rng))
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            return dumps(doc)                            # the parent is gone: unchanged
    last = path[-1]
    if isinstance(node, dict):
        if rng.random() < 0.2:
            node.pop(last, None)
        else:
            node[last] = json_value(rng)
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = json_value(rng)
    return dumps(doc)


# ---- gzip ---------------------------------------------------------------------------------------
def gz_mutate(rng, data: bytes, inner) -> bytes:
    """gzip-aware: mutate the decompressed contents (inner) and compress again, or edit the
    gzip header / trailer, or add members or junk, or make a small bomb."""
    try:
        raw = gzip.decompress(data)
    except Exception:
        return bitflip(rng, data)
    if len(data) < 18:
        return truncate(rng, data)
    r = rng.random()
    if r < 0.55:
        return gzip.compress(inner(rng, raw), compresslevel=rng.choice((0, 1, 9)), mtime=0)
    if r < 0.7:                                           # header: flags, method, extra fields
        b = bytearray(data)
        off = rng.choice((2, 3, 3, 9))
        b[off] = rng.choice((0, 1, 2, 4, 8, 16, 0x1F, 0xFF, 7))
        return bytes(b)
    if r < 0.8:                                           # trailer: CRC-32 or ISIZE
        b = bytearray(data)
        off = len(b) - rng.choice((8, 4))
        b[off:off + 4] = (rng.choice(INTERESTING_INTS) % 2 ** 32).to_bytes(4, "little")
        return bytes(b)
    if r < 0.88:
        return data + rng.choice((data, gzip.compress(b"x"), b"\x00" * 8, b"\x1f\x8b", b"junk"))
    if r < 0.95:                                          # a little bomb: far more than declared
        return gzip.compress(raw + b"\x00" * rng.choice((1 << 20, 8 << 20)), mtime=0)
    return zlib.compress(raw)                             # zlib, not gzip


# ---- PNG and JPEG -------------------------------------------------------------------------------
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes):
    out, i = [], 8
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append([data[i + 4:i + 8], data[i + 8:i + 8 + n]])
        i += 12 + n
    return out


def png_build(chunks, fix_crc=True) -> bytes:
    out = [PNG_SIG]
    for typ, body in chunks:
        crc = zlib.crc32(typ + body) if fix_crc else 0
        out.append(struct.pack(">I", len(body)) + typ + body + struct.pack(">I", crc))
    return b"".join(out)


def png_mutate(rng, data: bytes) -> bytes:
    """IHDR fields (size, bit depth, colour type, interlace), chunk order and lengths, IDAT
    contents recompressed: each with the CRCs made right again."""
    if data[:8] != PNG_SIG:
        return bitflip(rng, data)
    chunks = png_chunks(data)
    if not chunks:
        return data
    r = rng.random()
    ihdr = next((c for c in chunks if c[0] == b"IHDR"), None)
    if r < 0.45 and ihdr is not None and len(ihdr[1]) == 13:
        body = bytearray(ihdr[1])
        field = rng.choice(("w", "h", "wh", "depth", "color", "interlace", "filter"))
        if field in ("w", "h", "wh"):
            for off in ((0,) if field == "w" else (4,) if field == "h" else (0, 4)):
                v = rng.choice((0, 1, 7, 9, 100, 1000, 9460, 65535, 2 ** 31 - 1, 2 ** 31,
                                2 ** 32 - 1, 100000))
                body[off:off + 4] = struct.pack(">I", v)
        elif field == "depth":
            body[8] = rng.choice((0, 1, 2, 4, 8, 16, 3, 32))
        elif field == "color":
            body[9] = rng.choice((0, 2, 3, 4, 6, 1, 5, 7))
        elif field == "interlace":
            body[12] = rng.choice((0, 1, 2))
        else:
            body[rng.choice((10, 11))] = rng.choice((0, 1, 5))
        ihdr[1] = bytes(body)
    elif r < 0.65:
        idat = [c for c in chunks if c[0] == b"IDAT"]
        if idat:
            c = rng.choice(idat)
            try:
                raw = zlib.decompress(b"".join(x[1] for x in idat))
            except zlib.error:
                raw = b""
            edit = rng.choice((raw[:len(raw) // 2], raw + b"\x00" * 64, bitflip(rng, raw),
                               b"\x00" * (1 << 16), b"\x05" * len(raw)))
            for x in idat:
                x[1] = b""
            c[1] = zlib.compress(edit)
            chunks = [x for x in chunks if x[0] != b"IDAT" or x[1]]
    elif r < 0.8:
        i = rng.randrange(len(chunks))
        op = rng.random()
        if op < 0.4:
            del chunks[i]
        elif op < 0.7:
            chunks.insert(rng.randrange(len(chunks) + 1), list(chunks[i]))
        else:
            j = rng.randrange(len(chunks))
            chunks[i], chunks[j] = chunks[j], chunks[i]
    elif r < 0.9:
        chunks.insert(rng.randint(1, len(chunks)),
                      [rng.choice((b"PLTE", b"tRNS", b"iCCP", b"zTXt", b"tEXt", b"acTL", b"fcTL",
                                   b"gAMA", b"sBIT", b"eXIf")),
                       bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 13, 100))))])
    else:
        return png_build(chunks, fix_crc=False)
    return png_build(chunks)


def jpeg_segments(data: bytes):
    """[(marker, body)] up to the scan, and the rest (scan data onward)."""
    segs, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        (n,) = struct.unpack(">H", data[i + 2:i + 4])
        segs.append([marker, data[i + 4:i + 2 + n]])
        i += 2 + n
        if marker == 0xDA:
            break
    return segs, data[i:]


def jpeg_build(segs, rest) -> bytes:
    out = [b"\xff\xd8"]
    for marker, body in segs:
        out.append(bytes([0xFF, marker]) + struct.pack(">H", (len(body) + 2) % 65536) + body)
    return b"".join(out) + rest


def jpeg_mutate(rng, data: bytes) -> bytes:
    """SOF fields (size, precision, components, sampling), segments dropped, doubled or
    reordered, segment lengths, tables, and bytes of the entropy-coded scan."""
    if data[:2] != b"\xff\xd8":
        return bitflip(rng, data)
    segs, rest = jpeg_segments(data)
    if not segs:
        return bitflip(rng, data)
    r = rng.random()
    sof = [s for s in segs if s[0] in (0xC0, 0xC1, 0xC2)]
    if r < 0.4 and sof:
        s = rng.choice(sof)
        body = bytearray(s[1])
        field = rng.choice(("h", "w", "precision", "ncomp", "sampling", "table", "marker"))
        if field in ("h", "w") and len(body) >= 5:
            off = 1 if field == "h" else 3
            body[off:off + 2] = struct.pack(">H", rng.choice((0, 1, 8, 9, 1000, 9460, 65535)))
        elif field == "precision" and body:
            body[0] = rng.choice((8, 12, 16, 0, 255))
        elif field == "ncomp" and len(body) >= 6:
            body[5] = rng.choice((0, 1, 2, 3, 4, 255))
        elif field == "sampling" and len(body) >= 8:
            body[7] = rng.choice((0x11, 0x22, 0x44, 0x00, 0xFF, 0x41))
        elif field == "table" and len(body) >= 9:
            body[8] = rng.choice((0, 1, 3, 4, 255))
        else:
            s[0] = rng.choice((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xCF))
        s[1] = bytes(body)
    elif r < 0.6:
        i = rng.randrange(len(segs))
        op = rng.random()
        if op < 0.4:
            del segs[i]
        elif op < 0.7:
            segs.insert(rng.randrange(len(segs)), list(segs[i]))
        else:
            segs[i][1] = truncate(rng, segs[i][1]) if rng.random() < 0.5 else bitflip(rng, segs[i][1])
    elif r < 0.8 and len(rest) > 4:
        rest = bytearray(rest)
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(rest) - 2)
            rest[j] = rng.randrange(256)
        rest = bytes(rest)
    elif r < 0.9:
        rest = rest[:rng.randrange(len(rest) + 1)]
    else:
        segs.insert(rng.randrange(len(segs) + 1),
                    [rng.choice((0xE1, 0xE2, 0xEE, 0xFE, 0xDD, 0xC4, 0xDB)),
                     bytes(rng.randrange(256) for _ in range(rng.choice((0, 2, 4, 18, 200))))])
    return jpeg_build(segs, rest)


# ---- IDX ----------------------------------------------------------------------------------------
def idx_mutate(rng, data: bytes) -> bytes:
    """IDX header fields: dtype code, dimension count, dimensions (zero, huge, off by one), and
    the payload's length."""
    if len(data) < 4:
        return insert(rng, data)
    b = bytearray(data)
    kind = rng.choice(("code", "ndim", "dims", "dims", "payload", "magic"))
    ndim = b[3]
    if kind == "code":
        b[2] = rng.choice((0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0x0A, 0x00, 0xFF))
    elif kind == "ndim":
        b[3] = rng.choice((0, 1, 2, 3, 4, 255, (ndim + 1) % 256, max(ndim - 1, 0)))
        if rng.random() < 0.3:                            # that many zero dimensions: no data
            return bytes(b[:4]) + b"\0" * 4 * b[3]
        if rng.random() < 0.3 and b[3]:                   # huge sizes around a 0: no data
            dims = [rng.choice((0, 2 ** 32 - 1, 2 ** 31, 65536)) for _ in range(b[3] - 1)]
            return bytes(b[:4]) + struct.pack(f">{b[3]}I", 0, *dims)
    elif kind == "dims" and len(b) >= 4 + 4 * ndim and ndim:
        j = rng.randrange(ndim)
        cur = struct.unpack(">I", b[4 + 4 * j:8 + 4 * j])[0]
        v = rng.choice((0, 1, cur + 1, max(cur - 1, 0), cur * 2, 2 ** 31, 2 ** 32 - 1,
                        65536)) % 2 ** 32
        b[4 + 4 * j:8 + 4 * j] = struct.pack(">I", v)
    elif kind == "payload":
        return rng.choice((bytes(b[:4 + 4 * ndim]), bytes(b) + b"\x00" * rng.randint(1, 9),
                           bytes(b[:-rng.randint(1, 9)])))
    else:
        b[rng.randrange(2)] = rng.choice((1, 0x1F, 0xFF))
    return bytes(b)
