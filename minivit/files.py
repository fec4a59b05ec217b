"""Files in and out, checked in one place for every format.

Writing: every file minivit writes (checkpoints, exports, downloads, metrics, plots) goes through
atomic_write: a crash leaves the old file (or none), never half of a new one, and an OSError
(disk full, permission denied, read-only folder) becomes a WriteError naming the path.
clean_stale_temps removes the temporary files of a writer that was killed mid-write.

Reading: every reader (minivit checkpoints, Google .npz, safetensors, images, MNIST) raises
a subclass of FileFormatError whose message names the file, the problem and the fix:

    check_file(path, error)          missing (error.NotFound, also a FileNotFoundError), a
                                     folder, empty
    read_npz / read_npy              .npz/.npy without np.load: each array's header is parsed
                                     here (not by numpy, whose parser lets tokenizer and type
                                     errors through) and checked (check_header) before anything
                                     is allocated; zip members stored or deflated, none sharing
                                     bytes with another; never unpickles
    check_header(...)                numeric dtype, and a shape numpy can make whose size the
                                     file really holds
    check_finite(arrays, ...)        NaN or inf in a parameter, unless allow_nonfinite=True

Every reader is fuzzed: tests/fuzz (docs/reliability.md).
"""
from __future__ import annotations

import ast
import errno
import math
import os
import re
import stat
import tempfile
import warnings
import zipfile
import zlib

import numpy as np

from .errors import MinivitError

NUMERIC = "biuf"                       # dtype kinds a parameter file may hold: bool, int, float
MAX_DIMS = 32                          # the most dimensions an array may have (numpy 1.x's limit)
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
MAX_DEFLATE_RATIO = 1032               # deflate never expands more than this (zlib's bound)
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)   # what numpy.savez(_compressed) writes
_TEMP = re.compile(r"\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp$")   # atomic_write's temporary files:
#   '<name>.<pid>.<8 random chars>.tmp' (older minivit wrote no pid)


# ---- errors -------------------------------------------------------------------------------------
class FileFormatError(MinivitError, ValueError):
    """A file that cannot be read as what it should be; the message names the file, the problem
    and the fix. Each reader raises its own subclass (CheckpointError, GoogleNpzError, DataError,
    ImageFolderError); `<Error>.NotFound` is the same error for a missing file, which is also a
    FileNotFoundError."""

    NotFound: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, FileNotFoundError):
            cls.NotFound = _not_found(cls)


def _not_found(cls: type) -> type:
    """cls for a missing file: caught by `except cls` and by `except FileNotFoundError`."""
    return type("NotFound", (cls, FileNotFoundError),
                {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.NotFound",
                 "__doc__": f"{cls.__name__} for a file that does not exist."})


FileFormatError.NotFound = _not_found(FileFormatError)


class WriteError(MinivitError, OSError):
    """A file could not be written (disk full, permission denied, read-only folder, ...). The file
    that was there before is unchanged. WriteError(errno, strerror, path), like OSError."""

    def __str__(self) -> str:
        advice = {errno.ENOSPC: "the disk is full: free some space or write to another folder",
                  getattr(errno, "EDQUOT", -1): "the disk quota is used up: free some space",
                  errno.EACCES: "make the folder writable or write to another folder",
                  errno.EPERM: "make the folder writable or write to another folder",
                  errno.EROFS: "the file system is read-only: write to another folder"}
        fix = advice.get(self.errno, "check the path or write to another folder")
        return (f"cannot write {self.filename}: {self.strerror}; {fix} (what was there before "
                f"is unchanged)")


# ---- writing ------------------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """Call write(fileobj) on a temporary file beside path, then rename it over path: a crash
    leaves the old file (or none), never half of a new one. OSErrors become WriteError(path)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.{os.getpid()}.",
                                   suffix=".tmp", dir=folder)     # see clean_stale_temps
    except OSError as e:
        raise _write_error(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                     # mkstemp makes 0600; use the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(e, path) from e
        raise


def _write_error(e: OSError, path: str) -> WriteError:
    return WriteError(e.errno, e.strerror or str(e), path)


def clean_stale_temps(folder, names) -> list:
    """Remove the temporary files that atomic_write left in folder for these file names when its
    process was killed ('last.npz.<pid>.k3j_x9qa.tmp'); nothing else, and not those of a
    process that is still running on this machine (it may be writing them now). Returns the
    removed paths."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in os.scandir(folder):
        m = _TEMP.search(entry.name)
        if (m and entry.name[:m.start()] in names and entry.is_file(follow_symlinks=False)
                and not (m.group(1) and _running(int(m.group(1))))):
            os.remove(entry.path)
            removed.append(entry.path)
    return sorted(removed)


def _running(pid: int) -> bool:
    """Whether process pid runs on this machine (where that cannot be asked safely: only us)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":                                # os.kill(pid, 0) would end it on Windows
        return False
    try:
        os.kill(pid, 0)                                   # signal 0: only asks
    except ProcessLookupError:
        return False
    except OSError:                                       # EPERM: it exists, under another user
        return True
    return True


# ---- reading: the file itself -------------------------------------------------------------------
def check_file(path, error: type = FileFormatError, what: str = "a file",
               fix: str = "write or download it again") -> str:
    """path as a str, or error: error.NotFound when missing, error when a folder or empty."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error.NotFound(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}; check that it is readable") from e
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path} is a folder, not {what}; pass the file itself")
    if st.st_size == 0:
        raise error(f"{path} is empty (0 bytes), not {what} (an interrupted copy or download?); "
                    f"{fix}")
    return path


def check_header(path: str, name, dtype: np.dtype, shape: tuple, available: int,
                 error: type, fix: str, kinds: str = NUMERIC) -> int:
    """The byte size of an array stored as `name` in path (None: the file's only array), after
    checking, before anything is allocated, that its dtype is numeric (no objects: nothing is
    ever unpickled) and that the file really holds `available` == prod(shape) * itemsize bytes
    for it. Every array format (.npy, .npz, safetensors, ...) checks its headers here."""
    where = _where(path, name)
    if dtype.hasobject:
        raise error(f"{where} holds object (pickled) arrays, which minivit never loads: "
                    f"unpickling can run any code; save plain numeric arrays instead")
    if dtype.kind not in kinds:
        raise error(f"{where} has the unsupported dtype {dtype}, not a {_kind_names(kinds)} "
                    f"array; {fix}")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise error(f"{where} declares the invalid shape {shape}; {fix}")
    nbytes = math.prod(shape) * dtype.itemsize            # Python ints: no overflow
    if nbytes != available:
        what = "more data than the file holds" if nbytes > available else "less data than stored"
        raise error(f"{where} declares shape {_short(shape)} of {dtype} ({_size(nbytes)}), "
                    f"{what} ({_size(available)}): the file is truncated or damaged; {fix}")
    if len(shape) > MAX_DIMS or not indexable(shape, dtype.itemsize):   # sizes around a 0
        raise error(f"{where} declares shape {_short(shape)}, which no NumPy array can have "
                    f"(more than {MAX_DIMS} dimensions, or sizes past what an index can hold, "
                    f"even around a 0): the file is damaged; {fix}")
    return nbytes


def indexable(shape: tuple, itemsize: int) -> bool:
    """Whether numpy can make an array of this shape at all: the product of its non-zero sizes
    (a 0 does not excuse the others), in bytes, fits a signed index."""
    return math.prod(d for d in shape if d) * max(itemsize, 1) <= np.iinfo(np.intp).max


def _short(shape: tuple) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 120 else text[:117] + "..."


def _where(path: str, name) -> str:
    return f"{path}: array {name!r}" if name is not None else path


def _kind_names(kinds: str) -> str:
    names = [{"b": "bool", "i": "int", "u": "uint", "f": "float"}[k] for k in kinds]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000


# ---- reading: .npy and .npz ---------------------------------------------------------------------
NPY_MAX_HEADER = 10000                 # the longest header numpy itself parses (max_header_size)
NPY_KEYS = {"descr", "fortran_order", "shape"}
_PY2_LONG = re.compile(r"(?<=[0-9])L\b")                 # '(3L, 4L)': headers Python 2 wrote


def _read_array(fp, size: int, path: str, name: str, error: type, fix: str) -> np.ndarray:
    """One .npy stream of `size` bytes: magic, header (checked), then exactly the data."""
    where = _where(path, name)
    shape, fortran, dtype, nbytes = _npy_start(fp, size, path, name, error, fix)
    data = bytearray(fp.read(nbytes))                    # at most what the file holds
    if len(data) != nbytes or fp.read(1):
        raise error(f"{where} holds {len(data)} bytes of data, its header declares {nbytes}: "
                    f"the file is truncated or damaged; {fix}")
    arr = np.frombuffer(data, dtype)                      # writable: over a bytearray
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _npy_start(fp, size: int, path: str, name: str, error: type, fix: str) -> tuple:
    """(shape, fortran_order, dtype, data bytes) of the .npy stream of `size` bytes at fp: its
    magic, version and header read and checked (check_header), fp left at the data."""
    where = _where(path, name)
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError as e:
        raise error(f"{where} is not a NumPy .npy array ({e}); {fix}") from e
    if version not in ((1, 0), (2, 0)):
        raise error(f"{where} uses .npy format version {version[0]}.{version[1]}; minivit "
                    f"reads versions 1.0 and 2.0: save it again with numpy.save/savez")
    shape, fortran, dtype = _read_npy_header(fp, version, size, where, error, fix)
    return shape, fortran, dtype, check_header(path, name, dtype, shape, size - fp.tell(),
                                               error, fix)


def _read_npy_header(fp, version: tuple, size: int, where: str, error: type, fix: str) -> tuple:
    """(shape, fortran_order, dtype) of the header after the magic, parsed here rather than by
    numpy, whose parser lets tokenizer errors and TypeErrors of a damaged header through: the
    length is bounded by the file, the text read as a Python literal under one guard, and each
    field's type checked."""
    width = 2 if version == (1, 0) else 4
    raw = fp.read(width)
    n = int.from_bytes(raw, "little")
    left = size - fp.tell()
    if len(raw) != width or n > left:
        raise error(f"{where} is cut short inside its .npy header (it claims {n} bytes, "
                    f"{max(left, 0)} follow): the file is truncated or damaged; {fix}")
    if n > NPY_MAX_HEADER:
        raise error(f"{where} has a .npy header of {n} bytes, more than the {NPY_MAX_HEADER} "
                    f"numpy writes for any array: the file is damaged or hand-made; {fix}")
    text = fp.read(n).decode("latin1")
    try:
        header = _literal(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise error(f"{where} has a damaged header ({type(e).__name__}: it is not the Python "
                    f"dict .npy headers hold: {text[:60]!r}); {fix}") from e
    if not isinstance(header, dict) or set(header) != NPY_KEYS:
        keys = sorted(map(repr, header)) if isinstance(header, dict) else type(header).__name__
        raise error(f"{where} has a damaged header (it holds {keys}, not the keys 'descr', "
                    f"'fortran_order' and 'shape'); {fix}")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool)
                                               for d in shape):
        raise error(f"{where} has a damaged header (its shape {shape!r} is not a tuple of "
                    f"integers); {fix}")
    if not isinstance(fortran, bool):
        raise error(f"{where} has a damaged header (fortran_order {fortran!r} is not True or "
                    f"False); {fix}")
    if not isinstance(descr, str):                        # a list (structured) or a tuple
        raise error(f"{where} has the unsupported dtype {descr!r} (a structured or sub-array "
                    f"type), not a {_kind_names(NUMERIC)} array; {fix}")
    try:
        dtype = np.dtype(descr)
    except Exception as e:                                # whatever numpy's parser raises
        raise error(f"{where} has a damaged header (its dtype {descr[:40]!r} is not one numpy "
                    f"knows: {e}); {fix}") from e
    return shape, fortran, dtype


def _literal(text: str):
    """The Python literal in text; a header written by Python 2 (3L) is read too. The
    compiler's warnings about a damaged text (invalid escapes, '1if') are not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return ast.literal_eval(text)
        except SyntaxError:
            fixed = _PY2_LONG.sub("", text)
            if fixed == text:
                raise
            return ast.literal_eval(fixed)


def read_npy(path, error: type = FileFormatError, what: str = "a .npy array",
             fix: str = "save it again with numpy.save") -> np.ndarray:
    """The array of a .npy file, checked as check_header says; never unpickles."""
    path = check_file(path, error, what, fix)
    try:
        with open(path, "rb") as fp:
            return _read_array(fp, os.fstat(fp.fileno()).st_size, path, None, error, fix)
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}; check that it is readable") from e


def read_npz(path, error: type = FileFormatError, what: str = "an .npz archive",
             fix: str = "write or download it again") -> dict:
    """{name: array} of an .npz file without np.load (NpzReader: every member's header is
    checked before any data is read, the zip's CRC-32 is verified, nothing is unpickled).
    `what` names the format the caller expects ('a minivit checkpoint')."""
    with NpzReader(path, error, what, fix) as npz:
        return {name: npz.array(name) for name in npz.shapes}


class NpzReader:
    """An .npz file opened to be read one array at a time, without np.load:

        with NpzReader(path, error, "a minivit checkpoint", fix) as npz:
            npz.shapes                         # {name: (shape, dtype)}, every header checked
            a = npz.array(name)                # that member's data, read and checked

    Opening checks the zip's entries (no two members share bytes, stored or deflated, a size
    the file can hold) and every member's .npy header (check_header); array() reads one
    member's data (its CRC-32 verified by zipfile). Anything wrong raises `error` naming the
    file, the array and `fix`; an I/O error raises it saying the file cannot be read."""

    def __init__(self, path, error: type = FileFormatError, what: str = "an .npz archive",
                 fix: str = "write or download it again"):
        self.path = check_file(path, error, what, fix)
        self.error, self.what, self.fix = error, what, fix
        self._file = self._zip = None
        try:
            self._file = open(self.path, "rb")
            total = self._open_zip()
            self._infos = self._check_entries(total)
            self.shapes = {name: self._member(info, name, self._header)
                           for name, info in self._infos.items()}
        except OSError as e:                              # an I/O error, not the contents
            self.close()
            raise error(f"cannot read {self.path}: {e.strerror or e}; check that it is "
                        f"readable") from e
        except BaseException:
            self.close()
            raise

    def _open_zip(self) -> int:
        path, what, fix = self.path, self.what, self.fix
        head = self._file.read(len(NPY_MAGIC))
        if head == NPY_MAGIC:
            raise self.error(f"{path} holds a single array (.npy), not {what} (an .npz archive "
                             f"of named arrays); pass the .npz file")
        total = os.fstat(self._file.fileno()).st_size
        self._file.seek(0)
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError,
                OSError) as e:                            # OSError: a seek to a bad offset
            hint = (f"a zip archive whose directory is missing or damaged: {e}"
                    if head.startswith(ZIP_MAGIC)
                    else f"it starts with {head!r}, not a zip archive's PK")
            raise self.error(f"cannot read {path}: it is truncated or not {what} ({hint}); "
                             f"{fix}") from e
        return total

    def _check_entries(self, total: int) -> dict:
        """{array name: ZipInfo}, each entry checked against the file."""
        path, error, fix = self.path, self.error, self.fix
        infos = self._zip.infolist()
        _check_spans(infos, getattr(self._zip, "start_dir", total), total, path, error, fix)
        out = {}
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in out:
                raise error(f"{path} holds {name!r} twice; it was not written by numpy; {fix}")
            if info.compress_type not in ZIP_METHODS:
                raise error(f"{path}: array {name!r} is compressed with zip method "
                            f"{info.compress_type}; numpy writes stored or deflated members "
                            f"only: the file is damaged or was not written by numpy; {fix}")
            limit = info.compress_size * (MAX_DEFLATE_RATIO if info.compress_type else 1)
            if info.header_offset + info.compress_size > total or info.file_size > limit + 64:
                raise error(f"{path}: array {name!r} claims {_size(info.file_size)}, more than "
                            f"the file ({_size(total)}) can hold: it is truncated or damaged; "
                            f"{fix}")
            out[name] = info
        return out

    @staticmethod
    def _header(fp, size: int, path: str, name: str, error: type, fix: str) -> tuple:
        shape, _, dtype, _ = _npy_start(fp, size, path, name, error, fix)
        return shape, dtype

    def _member(self, info, name: str, read):
        """read(fp, size, path, name, error, fix) on the member; its zip and inflate errors
        (CRC, inflate, encrypted, names, ...) become self.error."""
        try:
            with self._zip.open(info) as fp:
                return read(fp, info.file_size, self.path, name, self.error, self.fix)
        except FileFormatError:
            raise
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError, RuntimeError,
                NotImplementedError, ValueError) as e:
            raise self.error(f"{self.path}: array {name!r} is corrupt ({type(e).__name__}: "
                             f"{e}); {self.fix}") from e

    def array(self, name: str) -> np.ndarray:
        """Array `name` (a key of shapes), its data read and checked."""
        return self._member(self._infos[name], name, _read_array)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()
        self._zip = self._file = None

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_spans(infos: list, start_dir: int, total: int, path: str, error: type,
                 fix: str) -> None:
    """Every member's local header and data lie before the next member and the directory: no
    two members share bytes, so the arrays together never outgrow what the file holds (an
    archive of overlapping members would inflate the same bytes again and again)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [min(start_dir, total)]
    for info, end in zip(ordered, ends):
        if info.header_offset < 0 or info.header_offset + 30 + info.compress_size > end:
            raise error(f"{path}: member {info.filename!r} overlaps the next member or the zip "
                        f"directory (its {_size(info.compress_size)} at offset "
                        f"{info.header_offset} do not fit before {end}): the file is damaged "
                        f"or hand-made; {fix}")


def check_finite(arrays: dict, path: str, error: type, fix: str) -> None:
    """Raise error naming every float array of {name: array} that holds NaN or inf."""
    bad = {k: (int(np.size(v) - np.isfinite(v).sum()), np.size(v)) for k, v in arrays.items()
           if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()}
    if bad:
        shown = ", ".join(f"{k} ({n} of {size} values)" for k, (n, size) in list(bad.items())[:8])
        more = f" and {len(bad) - 8} more arrays" if len(bad) > 8 else ""
        raise error(f"{path}: NaN or inf in {shown}{more}: the model diverged or the file is "
                    f"damaged; {fix}")


def save_figure(fig, path) -> None:
    """A matplotlib figure as a PNG at path, atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
