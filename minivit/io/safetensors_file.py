"""safetensors files: read here, memory-mapped, one tensor at a time; written through the
`safetensors` package (pip install -e .[hub]). The header is checked first, so that a bad file
is an error that names it, the tensor and the fix rather than a crash inside a reader:

    8 bytes       N, the header's length (unsigned little-endian)
    N bytes       JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                         "__metadata__": {str: str}}   offsets relative to the data that follows
    the data      each tensor's bytes, row-major, little-endian

Checked: the length fits the file; the header is a JSON object; every dtype is known; every
shape is a list of non-negative integers whose size times the item size is end - begin; every
range lies inside the data and no two overlap.

SafetensorsReader then maps the file read-only and gives one tensor at a time: an array over
its checked byte range (no copy), or, for bf16 and f16, that range widened to float32 (bf16 by
a 16-bit shift of its bits). release() hands the pages read so far back to the OS (madvise),
so that a loader copying each tensor into the model's flat parameter vector holds one copy
of the weights, not two. A file system that cannot map a file is read with plain reads, one
tensor at a time. Reading needs no package: the format is a JSON header and raw bytes.
read_safetensors reads every tensor at once (copies), for callers that want them all.

Pickle checkpoints (pytorch_model.bin, .pth, .pt, .ckpt, .pkl) are refused by name, before a
byte is read: unpickling runs arbitrary code.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from ..errors import MissingExtra, UserError
from ..files import FileFormatError, atomic_write, check_file, check_header

__all__ = ["SafetensorsError", "MissingExtra", "SafetensorsReader", "read_safetensors",
           "read_safetensors_header", "write_safetensors", "refuse_pickle", "PICKLE_SUFFIXES",
           "require_safetensors"]

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
          "BOOL": "?"}                    # BF16: read as its raw 16 bits, widened below
NAMES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16"}
MAX_HEADER = 100_000_000                  # the limit the safetensors package itself enforces
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
FIX = "download the file again"
INSTALL = 'pip install -e ".[hub]" (or pip install safetensors)'


class SafetensorsError(FileFormatError):
    """A file that is not a usable safetensors checkpoint; the message names the file, the tensor
    and the fix. SafetensorsError.NotFound (also a FileNotFoundError) for a missing file."""


def require_safetensors():
    """The safetensors package, or an ImportError saying what to install."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise MissingExtra(f"writing .safetensors checkpoints needs the safetensors package: "
                           f"{INSTALL}") from e
    return safetensors


def refuse_pickle(path) -> None:
    """Raise SafetensorsError for a pickle checkpoint, before any byte of it is read."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(PICKLE_SUFFIXES) or name == "pytorch_model.bin.index.json":
        raise SafetensorsError(
            f"{path} is a pickle checkpoint (PyTorch .bin/.pth/.pt/.ckpt), which minivit never "
            f"loads: unpickling can run arbitrary code. Use the model's model.safetensors (most "
            f"Hugging Face repositories have one: huggingface-cli download REPO "
            f"model.safetensors config.json), or convert it where you trust it, in Python with "
            f"transformers: AutoModel.from_pretrained(dir).save_pretrained(out, "
            f"safe_serialization=True); with timm: safetensors.torch.save_file("
            f"model.state_dict(), 'model.safetensors'); with plain torch: safetensors.torch."
            f"save_file(torch.load(path, weights_only=True), 'model.safetensors')")


def read_safetensors_header(path) -> tuple[dict, dict, int]:
    """({name: (dtype code, shape, begin, end)} with absolute byte offsets, metadata, file size),
    after every check of the module docstring; SafetensorsError naming the file and tensor."""
    refuse_pickle(path)
    path = check_file(path, SafetensorsError, "a safetensors file", FIX)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path} is {size} bytes, too short for a safetensors header "
                                   f"(8-byte length + JSON); {FIX}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: its header claims {n} bytes but the file holds "
                                   f"{size}: it is truncated or not a safetensors file; {FIX}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SafetensorsError(f"{path}: its header is not JSON ({e}): the file is damaged or "
                               f"not a safetensors file; {FIX}") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: its header is a JSON {type(header).__name__}, not an "
                               f"object of tensors; {FIX}")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError(f"{path}: its __metadata__ is not an object of strings (the "
                               f"format's {{\"key\": \"value\"}}): the file is damaged or "
                               f"hand-made; {FIX}")
    data_len = size - 8 - n
    tensors = {name: _check_entry(path, name, e, data_len, 8 + n) for name, e in header.items()}
    _check_overlap(path, tensors)
    return tensors, meta, size


def _check_entry(path: str, name: str, e, data_len: int, base: int) -> tuple:
    where = f"{path}: tensor {name!r}"
    if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
        raise SafetensorsError(f"{where} has no dtype/shape/data_offsets entry; {FIX}")
    code, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise SafetensorsError(f"{where} has the unknown dtype {code!r} (known: "
                               f"{', '.join(DTYPES)}); save it again as F32, F16 or BF16")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
        raise SafetensorsError(f"{where} has invalid data_offsets {offs!r}; {FIX}")
    begin, end = offs
    if not 0 <= begin <= end <= data_len:
        raise SafetensorsError(f"{where} has bytes [{begin}, {end}) outside the file's "
                               f"{data_len} bytes of data: it is truncated or damaged; {FIX}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              for d in shape):
        raise SafetensorsError(f"{where} has the invalid shape {shape!r}; {FIX}")
    check_header(path, name, np.dtype(DTYPES[code]), tuple(shape), end - begin,
                 SafetensorsError, FIX, kinds="biuf")
    return code, tuple(shape), base + begin, base + end


def _check_overlap(path: str, tensors: dict) -> None:
    spans = sorted((b, e, k) for k, (_, _, b, e) in tensors.items() if e > b)
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"{path}: tensors {k0!r} and {k1!r} share bytes "
                                   f"[{b1}, {min(e0, e1)}): the file is damaged or hand-made; "
                                   f"{FIX}")


class SafetensorsReader:
    """A checked safetensors file (read_safetensors_header), mapped read-only:

        with SafetensorsReader(path) as f:
            w = f.tensor("head.weight")        # over the mapped bytes; bf16/f16 -> float32
            ...                                # copy it where it goes
            f.release()                        # the pages read so far leave this process

    Arrays from tensor() are read-only views of the file (a view still alive at close() keeps
    the map until it is freed); copy what must be written to."""

    def __init__(self, path):
        self.tensors, self.meta, self.size = read_safetensors_header(path)
        self.path = os.fspath(path)
        self._spans = []                                  # (begin, end) read since release()
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise SafetensorsError(f"cannot read {self.path}: {e.strerror or e}; check that "
                                   f"it is readable") from e
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):                     # cannot be mapped: plain reads
            self._map = None
        now = len(self._map) if self._map is not None else os.fstat(self._file.fileno()).st_size
        if now != self.size:
            self.close()
            raise SafetensorsError(f"{self.path} changed while it was read ({self.size} bytes, "
                                   f"now {now}); read it again once it is complete")

    def stand_ins(self) -> dict:
        """{name: an array of the tensor's shape and (widened) dtype that holds no data}."""
        out = {}
        for k, (code, shape, _, _) in self.tensors.items():
            dt = np.float32 if code in ("BF16", "F16") else np.dtype(DTYPES[code])
            out[k] = np.broadcast_to(np.zeros((), dt), shape)
        return out

    def tensor(self, name: str) -> np.ndarray:
        """Tensor `name` as a read-only host array: over the mapped file, or float32 for bf16
        and f16."""
        code, shape, begin, end = self.tensors[name]
        dt = np.dtype(DTYPES[code])
        if end == begin:
            return np.zeros(shape, np.float32 if code in ("BF16", "F16") else dt.newbyteorder("="))
        if self._map is not None:
            a = np.frombuffer(self._map, dt, count=(end - begin) // dt.itemsize, offset=begin)
            self._spans.append((begin, end))
        else:
            self._file.seek(begin)
            data = self._file.read(end - begin)
            if len(data) != end - begin:
                raise SafetensorsError(f"{self.path}: tensor {name!r} is cut short: the file "
                                       f"changed while it was read; {FIX}")
            a = np.frombuffer(data, dt)
        a = a.reshape(shape)
        if code == "BF16":
            return bf16_to_float32(a)
        if code == "F16":
            return a.astype(np.float32)
        return a if dt.isnative else a.astype(dt.newbyteorder("="))

    def release(self) -> None:
        """Drop the mapped pages of the tensors read since the last release from this process
        (where the OS can; they are read from the file again if touched)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            page = mmap.PAGESIZE
            for begin, end in self._spans:
                start = begin // page * page              # madvise takes whole pages
                try:
                    self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
                except OSError:                           # only a hint: the pages stay mapped
                    break
        self._spans = []

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:                           # an array still views it: the map
                pass                                      # is unmapped with the last such view
            self._map = None
        self._file.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_safetensors(path) -> tuple[dict, dict]:
    """({name: float32/float64/int host array}, metadata) of a checked safetensors file; f16 and
    bf16 become float32. Every tensor is read (a writable copy), one at a time."""
    with SafetensorsReader(path) as f:
        out = {}
        for k in f.tensors:
            out[k] = np.array(f.tensor(k))
            f.release()
        return out, f.meta


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: a bfloat16 is the top half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(arrays: dict, path, metadata: dict | None = None) -> None:
    """Write {name: host array} as safetensors (atomically), with metadata {'format': 'pt'} as
    transformers and timm expect."""
    st = require_safetensors()
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    bad = [f"{k}: {v.dtype}" for k, v in arrays.items() if v.dtype not in NAMES]
    if bad:
        raise UserError(f"only float16/32/64 tensors are written; got {bad}")
    data = st.numpy.save(arrays, metadata={"format": "pt", **(metadata or {})})
    atomic_write(os.fspath(path), lambda f: f.write(data))
