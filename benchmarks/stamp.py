"""Benchmark results as data: every record a benchmark script measures is stamped with where,
with what and from which code it was measured, and appended to a JSON-lines file as soon as it
is measured (one line per record, flushed), so that a later crash loses nothing.

    sink = stamp.Sink(path)              # benchmarks/results/<machine tag>.jsonl by default
    sink.write(record)                   # stamps it (stamp.stamp) and appends one line

A stamped record is the measurement's own fields (config, batch, what, impl, ms, ...) plus:

    schema    1
    time      UTC date and time it was measured, "2026-01-31T12:34:56Z"
    run       one id per top-level command: the records of one sitting (and their ratios)
    command   the command line that produced it, as typed from the repository root
    script    the benchmark script that measured it (bench.py, pretrained.py, allreduce.py)
    git       {"commit", "dirty"}: the code measured (dirty: tracked files other than the
              results differ from the commit)
    machine   {"tag", "cpu", "cores", "cores_usable", "isa", "cpu_flags", "blas", "gpu"}: the
              CPU model, its cores and vector extensions, NumPy's BLAS (name, version, the
              kernel it chose at run time), the GPU (when one is visible)
    versions  python, numpy, minivit, and torch, transformers, cupy, onnxruntime, ... when the
              measuring process had imported them

benchmarks/table.py turns the files into the table in benchmarks/README.md.
"""
from __future__ import annotations

import ctypes
import datetime
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

SCHEMA = 1
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
RUN_VAR = "MINIVIT_BENCH_RUN"      # the run id, handed from a command to the processes it starts
COMMIT_VAR = "MINIVIT_COMMIT"      # the commit, for a copy of the code without .git: SHA[+dirty]
OUTDIR_VAR = "MINIVIT_BENCH_OUTDIR"  # a run's output folder, written OUTDIR in command lines
# BLAS and OpenMP read their thread counts from these once, when NumPy or PyTorch loads: a
# benchmark sets them (or hands them to a child process) before that
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# versions are recorded for these when the measuring process imported them
LIBRARIES = ("numpy", "minivit", "torch", "transformers", "cupy", "onnxruntime", "onnx",
             "onnxscript", "safetensors", "scipy", "mpi4py")


# ---- the machine ------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model name (/proc/cpuinfo on Linux, else platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_vector_flags() -> list:
    """The CPU's vector-instruction flags (avx..., amx..., fma; asimd/sve on Arm), from
    /proc/cpuinfo: two machines with the same model name can differ here."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted(t for t in line.split(":", 1)[1].split()
                                  if t.startswith(("avx", "amx", "fma", "asimd", "sve")))
    except OSError:
        pass
    return []


def isa(flags: list) -> str:
    """The widest vector extension: avx512, avx2, sve, asimd, or ''."""
    for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("sve", "sve"),
                       ("asimd", "asimd")):
        if flag in flags:
            return name
    return ""


def _numpy_openblas_lib() -> str | None:
    """The path of the OpenBLAS library NumPy loaded (Linux: from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    paths = sorted(p for p in paths if os.path.isfile(p))
    ours = [p for p in paths if "numpy" in p]          # numpy.libs/ before SciPy's own copy
    return (ours or paths or [None])[0]


def _openblas_call(lib: ctypes.CDLL, name: str) -> str | None:
    """openblas_<name>() as a string, under the symbol names OpenBLAS builds use (plain, and
    scipy-openblas's prefixed and 64-bit-suffixed ones)."""
    for sym in (f"openblas_{name}", f"openblas_{name}64_", f"scipy_openblas_{name}64_",
                f"scipy_openblas_{name}"):
        fn = getattr(lib, sym, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            out = fn()
            return out.decode(errors="replace").strip() if out else None
    return None


def blas_info() -> dict:
    """NumPy's BLAS: name and version from its build configuration, and the kernel the
    library chose for this CPU at run time (OpenBLAS's core name, through threadpoolctl when
    installed, else through ctypes)."""
    import numpy as np
    info: dict = {}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info = {"name": deps.get("name"), "version": deps.get("version")}
    except Exception:                         # numpy < 1.26 has no dicts mode
        pass
    try:
        from threadpoolctl import threadpool_info
        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        pools.sort(key=lambda p: "numpy" not in p.get("filepath", ""))
        if pools:
            info.setdefault("name", pools[0].get("internal_api"))
            if pools[0].get("architecture"):
                info["kernel"] = pools[0]["architecture"]
            return info
    except Exception:                         # not installed, or a library it cannot read
        pass
    path = _numpy_openblas_lib()
    if path:
        try:
            kernel = _openblas_call(ctypes.CDLL(path), "get_corename")
        except OSError:
            kernel = None
        if kernel:
            info["kernel"] = kernel
    return info


_GPU_CACHE: list = []


def gpu_names() -> list:
    """The names of the visible GPUs: from CuPy or PyTorch when this process already uses one,
    else from nvidia-smi when it is on the PATH; [] when there is none."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            names = [cupy.cuda.runtime.getDeviceProperties(i)["name"] for i in range(n)]
            return [v.decode() if isinstance(v, bytes) else str(v) for v in names]
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:
            pass
    if not _GPU_CACHE:
        names = []
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            except (OSError, subprocess.SubprocessError):
                pass
        _GPU_CACHE.append(names)
    return list(_GPU_CACHE[0])


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes."""
    text = re.sub(r"\((r|tm|c)\)|\bcpu\b|\bprocessor\b|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_tag(cpu: str, cores: int, gpus: list, vector: str = "") -> str:
    """A file-name-safe name for the machine, e.g. "amd-epyc-avx512-2c" or
    "intel-xeon-platinum-8480-avx512-16c-nvidia-h100-80gb-hbm3"."""
    tag = slug(cpu) + (f"-{vector}" if vector else "") + f"-{cores}c"
    if gpus:
        tag += "-" + slug(gpus[0]) + (f"-x{len(gpus)}" if len(gpus) > 1 else "")
    return tag


def machine() -> dict:
    cpu, cores = cpu_name(), os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    gpus, flags = gpu_names(), cpu_vector_flags()
    return {"tag": machine_tag(cpu, cores, gpus, isa(flags)), "cpu": cpu, "cores": cores,
            "cores_usable": usable, "isa": isa(flags), "cpu_flags": flags, "blas": blas_info(),
            "gpu": gpus[0] if gpus else None, "gpus": len(gpus), "os": platform.system()}


# ---- the code and the libraries ---------------------------------------------------------------
def versions() -> dict:
    """python, and each library of LIBRARIES this process has imported."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
        elif name == "numpy":
            out[name] = importlib.import_module("numpy").__version__
        elif name == "minivit":                  # this checkout's, without importing it
            out[name] = _minivit_version()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            out["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.version, "cuda", None):
        out["torch_cuda"] = torch.version.cuda
    return out


def _minivit_version() -> str | None:
    try:
        with open(os.path.join(ROOT, "minivit", "__init__.py"), encoding="utf-8") as f:
            m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", f.read(), re.M)
        return m.group(1) if m else None
    except OSError:
        return None


_GIT_CACHE: list = []


def git_state() -> dict:
    """{"commit", "dirty"} of the checkout (dirty: a tracked file other than the results
    differs from the commit); from $MINIVIT_COMMIT (SHA or SHA+dirty) when there is no git
    checkout (a copy of the working tree on another machine); commit None when neither."""
    if _GIT_CACHE:
        return dict(_GIT_CACHE[0])
    state = {"commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=20)
        if head.returncode == 0:
            st = subprocess.run(["git", "-C", ROOT, "status", "--porcelain",
                                 "--untracked-files=no", "--", ".",
                                 ":(exclude)benchmarks/results"],
                                capture_output=True, text=True, timeout=20)
            state = {"commit": head.stdout.strip(),
                     "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        pass
    if state["commit"] is None and os.environ.get(COMMIT_VAR):
        sha, _, flag = os.environ[COMMIT_VAR].partition("+")
        state = {"commit": sha, "dirty": flag == "dirty", "from": COMMIT_VAR}
    _GIT_CACHE.append(state)
    return dict(state)


def command_line(argv: list | None = None) -> str:
    """This process's command line as typed from the repository root: "python", the script's
    path relative to the root, and a run's output folder ($MINIVIT_BENCH_OUTDIR) as OUTDIR
    (no machine paths)."""
    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    if argv and os.path.isabs(argv[0]):
        rel = os.path.relpath(argv[0], ROOT)
        argv[0] = rel if not rel.startswith("..") else os.path.basename(argv[0])
    out = os.environ.get(OUTDIR_VAR)
    if out:
        argv = ["OUTDIR" + a[len(out):] if a == out or a.startswith(out + os.sep) else a
                for a in argv]
    return shlex.join(["python"] + argv)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_RUN: list = []


def run_id() -> str:
    """The run this process belongs to: $MINIVIT_BENCH_RUN when the command that started it
    set it (child_env), else one of its own (UTC time and process id)."""
    if not _RUN:
        _RUN.append(os.environ.get(RUN_VAR) or datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}")
    return _RUN[0]


def child_env(env: dict | None = None) -> dict:
    """The environment for a process this one starts to measure: this run's id in it."""
    return {**(os.environ if env is None else env), RUN_VAR: run_id()}


_MACHINE_CACHE: list = []


def stamp(record: dict, script: str | None = None) -> dict:
    """The record with the stamp added in place (fields it already has are kept: a record
    relayed from a child process keeps the child's stamp) and returned."""
    if not _MACHINE_CACHE or (_MACHINE_CACHE[0]["gpu"] is None and "cupy" in sys.modules):
        _MACHINE_CACHE[:] = [machine()]
    record.setdefault("schema", SCHEMA)
    record.setdefault("time", utc_now())
    record.setdefault("run", run_id())
    record.setdefault("command", command_line())
    if script:
        record.setdefault("script", script)
    record.setdefault("git", git_state())
    record.setdefault("machine", dict(_MACHINE_CACHE[0]))
    record.setdefault("versions", versions())
    return record


# ---- where the records go ---------------------------------------------------------------------
def default_path() -> str:
    """benchmarks/results/<machine tag>.jsonl."""
    if not _MACHINE_CACHE:
        _MACHINE_CACHE[:] = [machine()]
    return os.path.join(RESULTS_DIR, _MACHINE_CACHE[0]["tag"] + ".jsonl")


class Sink:
    """Appends stamped records to a JSON-lines file, one line each, flushed as written; "-"
    writes them to standard output instead (how a benchmark process hands its records to the
    command that started it). None: the default file."""

    def __init__(self, path: str | None = None, script: str | None = None):
        self.script = script
        self.path = default_path() if path is None else path
        self._file = None

    def write(self, record: dict) -> dict:
        stamp(record, self.script)
        line = json.dumps(record, default=_jsonable) + "\n"
        if self.path == "-":
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            if self._file is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _jsonable(v):
    """NumPy scalars and other stragglers as plain JSON values."""
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def read(paths: list) -> list:
    """The records of these JSON-lines files, in file order; a line that is not a JSON object
    (a write cut short) is skipped with a note on stderr."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    r = None
                if not isinstance(r, dict):
                    print(f"{path}:{i}: not a JSON record; skipped", file=sys.stderr)
                    continue
                out.append(r)
    return out
