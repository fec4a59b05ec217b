"""Running fuzz cases: one case is a format, a seed and a mutation kind, all it needs to be made
again (`python -m tests.fuzz --format F --replay SEED:KIND`).

A case's outcome is one of
    ok          the loader returned something valid (formats.Format.check)
    refused     it raised the FileFormatError family, naming the file (or its folder)
and the failures
    escape      any other exception
    unnamed     a FileFormatError whose message does not name the file or its folder
    bad-result  it returned something invalid
    hang        it ran past the time limit (signal alarm; a watchdog process for C code)
    memory      MemoryError (the long run's workers run under an address-space limit)
    crash       the worker process died (reported by the driver, __main__.py)
    harness     the mutation itself failed (a bug of tests/fuzz, not of minivit)
"""
from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import time
import traceback
import warnings
from dataclasses import asdict, dataclass

from .formats import FORMATS, Format

FAILURES = ("escape", "unnamed", "bad-result", "hang", "memory", "crash", "harness")


class Timeout(BaseException):
    """Raised by the alarm in a case that runs too long (a BaseException: readers that catch
    Exception must not swallow it)."""


@dataclass
class Outcome:
    format: str
    seed: int
    kind: str
    loader: str
    status: str
    error: str = ""                   # the exception's type
    message: str = ""
    where: str = ""                   # the innermost frames of the traceback
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in FAILURES

    def replay(self) -> str:
        return f"python -m tests.fuzz --format {self.format} --replay {self.seed}:{self.kind}"

    def key(self) -> tuple:
        """What makes two failures the same bug: format, status, exception, place."""
        return (self.format, self.status, self.error, self.where.split(" <- ")[0])

    def to_dict(self) -> dict:
        return asdict(self)


# ---- making a case ------------------------------------------------------------------------------
def plan(fmt: Format, seed: int, kind: str | None = None) -> tuple[dict, str, str]:
    """(seed tree, mutation kinds 'a+b', loader name) of a case: drawn from the seed alone, so
    that a replay with the same SEED:KIND makes the same file."""
    rng = random.Random(f"{fmt.name}:{seed}")
    trees = fmt.seed_trees()
    tree = trees[rng.randrange(len(trees))]
    kinds = sorted(fmt.mutators)
    n = 1 if rng.random() < 0.6 else 2 if rng.random() < 0.75 else 3
    drawn = "+".join(rng.choice(kinds) for _ in range(n))
    loaders = sorted(fmt.loaders())
    loader = loaders[rng.randrange(len(loaders))]
    return tree, kind or drawn, loader


def mutate(fmt: Format, seed: int, tree: dict, kind: str) -> dict:
    for j, k in enumerate(kind.split("+")):
        if k not in fmt.mutators:
            raise ValueError(f"{fmt.name} has no mutation {k!r} (it has {sorted(fmt.mutators)})")
        tree = fmt.mutators[k](random.Random(f"{fmt.name}:{seed}:{j}:{k}"), tree)
    return tree


_written: dict = {}                   # folder -> the tree last written there


def _put(path: str, data: bytes) -> None:
    """Write data over path without O_TRUNC (truncating an existing file can cost milliseconds
    on some file systems: they flush it first)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def write_tree(folder: str, tree: dict, single: str = "") -> None:
    """Make folder hold exactly the tree ({relative path: bytes, or None for a folder}),
    changing only what differs from the tree written there before."""
    old = _written.get(folder)
    if old is None or not os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        old = {}
    try:
        for rel in sorted(set(old) - set(tree), key=lambda k: -k.count("/")):
            path = os.path.join(folder, rel)
            if old[rel] is None:
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
        for rel in sorted(tree, key=lambda k: (k.count("/"), k)):
            path = os.path.join(folder, rel)
            if tree[rel] is None:
                if old.get(rel, b"") is not None and os.path.lexists(path):
                    os.remove(path)
                os.makedirs(path, exist_ok=True)
            elif old.get(rel) != tree[rel]:
                if rel in old and old[rel] is None:
                    shutil.rmtree(path)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _put(path, tree[rel])
    except OSError:                                       # a file where a folder must go: anew
        _written.pop(folder, None)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for rel in sorted(tree, key=lambda k: (k.count("/"), k)):
            path = os.path.join(folder, rel)
            try:
                if tree[rel] is None:
                    os.makedirs(path, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _put(path, tree[rel])
            except OSError:
                pass                                      # two entries that cannot both be
    _written[folder] = dict(tree)


# ---- running a case -----------------------------------------------------------------------------
def _on_alarm(signum, frame):
    raise Timeout()


def _where(tb) -> str:
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "minivit" in f.filename.replace(os.sep, "/").split("/tests/")[0]
            and "/tests/" not in f.filename.replace(os.sep, "/")]
    shown = (ours[-2:] if ours else []) + frames[-1:]
    parts = []
    for f in reversed(shown):
        name = f.filename.replace(os.sep, "/")
        short = name[name.rfind("minivit/"):] if "minivit/" in name else os.path.basename(name)
        part = f"{short}:{f.lineno} {f.name}"
        if part not in parts:
            parts.append(part)
    return " <- ".join(parts)


def run_case(fmt: Format, seed: int, workdir: str, kind: str | None = None,
             time_limit: float = 10.0, verbose: bool = False) -> Outcome:
    """Make case (fmt, seed[, kind]) in workdir and load it; its Outcome."""
    from minivit.files import FileFormatError
    tree, kind, loader_name = plan(fmt, seed, kind)
    try:
        tree = mutate(fmt, seed, tree, kind)
    except Exception as e:                                # a bug of the harness: say so
        return Outcome(fmt.name, seed, kind, loader_name, "harness", type(e).__qualname__,
                       f"the mutation itself failed: {e}"[:300], _where(e.__traceback__))
    folder = os.path.join(workdir, "case")
    write_tree(folder, tree)
    path = os.path.join(folder, fmt.root) if fmt.root else folder
    load = fmt.loaders()[loader_name]
    out = Outcome(fmt.name, seed, kind, loader_name, "ok")
    old = signal.signal(signal.SIGALRM, _on_alarm) if time_limit else None
    t0 = time.perf_counter()
    try:
        if time_limit:
            signal.setitimer(signal.ITIMER_REAL, time_limit)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = load(path)
        finally:
            if time_limit:
                signal.setitimer(signal.ITIMER_REAL, 0)
        problem = fmt.check(result) if fmt.check else None
        if problem:
            out.status, out.message = "bad-result", problem
    except Timeout:
        out.status, out.error = "hang", "Timeout"
        out.message = f"ran past {time_limit} s"
    except MemoryError as e:
        out.status, out.error, out.message = "memory", "MemoryError", str(e)[:300]
        out.where = _where(e.__traceback__)
    except FileFormatError as e:
        msg = str(e)
        out.error, out.message = type(e).__qualname__, msg[:300]
        if not fmt.raises:
            out.status = "escape"
        elif path in msg or folder in msg:
            out.status = "refused"
        else:
            out.status = "unnamed"
        if out.failed:
            out.where = _where(e.__traceback__)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:                            # noqa: B036 -- every escape counts
        out.status, out.error, out.message = "escape", type(e).__qualname__, str(e)[:300]
        out.where = _where(e.__traceback__)
        if verbose:
            traceback.print_exc()
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    out.seconds = time.perf_counter() - t0
    if out.status in ("ok", "refused") and time_limit and out.seconds > time_limit:
        out.status, out.error, out.message = "hang", "Timeout", f"took {out.seconds:.1f} s"
    return out


def run_many(fmt: Format, seeds, workdir: str, time_limit: float = 10.0,
             on_case=None) -> tuple[dict, list]:
    """({status: count}, [failed Outcome]) of the cases seeds of fmt."""
    counts, failures = {}, []
    for seed in seeds:
        if on_case is not None:
            on_case(seed)
        out = run_case(fmt, seed, workdir, time_limit=time_limit)
        counts[out.status] = counts.get(out.status, 0) + 1
        if out.failed:
            failures.append(out)
    return counts, failures


# ---- memory -------------------------------------------------------------------------------------
def address_space() -> int:
    """This process's virtual memory size in bytes (Linux), or 0 when unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def memory_limit(extra_bytes: int):
    """While inside: an address-space limit of the current size + extra_bytes, so that a file
    that makes a reader reserve more raises MemoryError (Linux; elsewhere no limit)."""
    size = address_space()
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError, AttributeError):
        size = 0
    if not size:
        yield
        return
    want = size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def formats(names=None) -> list:
    if not names:
        return list(FORMATS.values())
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise SystemExit(f"unknown format(s) {unknown}; the formats are {', '.join(FORMATS)}")
    return [FORMATS[n] for n in names]
