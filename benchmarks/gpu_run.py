"""The GPU run, prepared to succeed in one short call on a lent GPU machine (benchmarks/README.md,
"GPU"): every check and measurement the CuPy path needs, each step in its own process under its
own time limit, the whole under a time budget, all output in OUTDIR (6 files).

    bash benchmarks/gpu_run.sh OUTDIR --data MNIST_DIR          # the main plan, <= 8 minutes
    bash benchmarks/gpu_extra.sh OUTDIR                         # what did not fit (optional)
    python benchmarks/gpu_run.py OUTDIR --device cpu --tiny     # the dry run (seconds, no GPU)

The main plan, in order (a step that would not end inside the budget is not started):
    env        device and versions: GPU, CUDA, CuPy, NumPy, PyTorch, NCCL (env.json)
    tests      the CuPy half of the test suite: every test on the `xp` fixture's cupy parameter,
               the fused-kernel tests and the NCCL test, under a per-test timeout (tests.txt)
    train      one epoch of MNIST training on the GPU from --data (train.txt)
    bench-*    bench.py with --results OUTDIR/results.jsonl (each record appended as it is
               measured), --rounds 1, --wait-quiet 0: MNIST and ViT-B/16 batch 64, training step
               and inference, minivit on CuPy against PyTorch on CUDA (attention written out,
               and fused), then minivit on NumPy on this machine's CPU cores (bench.txt)
summary.json says which steps passed, failed, timed out or were not run, and why; it is
rewritten after every step, so a run cut short still says how far it got.

The dry run (--device cpu --tiny) runs the same steps on the CPU with the smoke model and a few
images (tests/test_benchmarks.py runs it, so this script cannot rot unnoticed).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import stamp  # benchmarks/ is not a package: the script's folder is on the path

HERE, ROOT = stamp.HERE, stamp.ROOT
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
# the files written to OUTDIR (no other): at most 7, so that all of them come back
ENV, SUMMARY, TESTS, TRAIN, BENCH, RESULTS = ("env.json", "summary.json", "tests.txt",
                                              "train.txt", "bench.txt", "results.jsonl")
MIN_STEP_S = 20            # a step is not started with less time than this left in the budget
TEST_SELECTION = "cupy or test_fused or test_nccl"   # the xp fixture's cupy id, two GPU-only files


@dataclasses.dataclass
class Step:
    name: str
    cmd: list                  # the command (run from the repository root)
    log: str | None            # the file in OUTDIR its output is appended to (None: the end
                               # of its output goes into summary.json)
    cap_s: float               # its own time limit
    skip: str | None = None    # why it is not run, if it is not
    after: object = None       # called with (step, log file) when the command has ended
    temp: str | None = None    # a temporary folder of its own, removed at the end of the run


# ---- the plans --------------------------------------------------------------------------------
def bench_step(name: str, a, config: str, batch: int, device: str, impls: str, what: str,
               cap_s: float, steps: int = 30, warmup: int = 5, rounds: int = 1,
               extra: tuple = ()) -> Step:
    """bench.py for one config on one device, its records streamed to OUTDIR/results.jsonl."""
    threads = a.cpu_threads if device == "cpu" else 2
    if a.tiny:                 # the smoke model, a few images and steps: seconds
        config, batch, steps, warmup = "tiny", 8, 2, 1
        extra = tuple(extra) + ("--peak-n", "64", "--peak-reps", "2", "--layer-reps", "2")
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--config", config, "--batch",
           str(batch), "--device", device, "--impl", impls, "--what", what, "--rounds", str(rounds),
           "--wait-quiet", "0", "--steps", str(steps), "--warmup", str(warmup), "--threads",
           str(threads), "--results", os.path.join(a.out, RESULTS), *extra]
    return Step(name, cmd, BENCH, cap_s)


def gpu_impls(a) -> str:
    """minivit against PyTorch (attention written out, and fused), where torch is installed."""
    if importlib.util.find_spec("torch") is None:
        return "minivit"
    return "minivit,torch" if a.tiny else "minivit,torch,torch-sdpa"


def env_step(a) -> Step:
    return Step("env", [sys.executable, os.path.abspath(__file__), "--collect-env",
                        os.path.join(a.out, ENV)], None, 60)


def test_step(a, selection: str | None, cap_s: float, name: str = "tests") -> Step:
    where = "tests/test_optim.py" if a.tiny else "tests"   # the dry run: the mechanics only
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", where]
    if selection:
        cmd += ["-k", selection]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += [f"--timeout={a.per_test_timeout}"]
    return Step(name, cmd, TESTS, cap_s)


def train_step(a) -> Step:
    """One epoch of MNIST on the device, into a temporary folder (its metrics copied to the log
    afterwards, its checkpoints dropped)."""
    run_dir = tempfile.mkdtemp(prefix="minivit-gpu-run-")
    entry = [a.train_script] if a.train_script else ["-m", "minivit.train"]
    cmd = [sys.executable, *entry, "--device", a.device, "--epochs", "1", "--procs", "1",
           "--quiet", "--data", a.data or "", "--out", run_dir]
    if a.tiny:
        cmd += ["--model", "tiny", "--batch-size", "64", "--limit-train", "512",
                "--limit-test", "256"]
    skip = None
    if not a.data:
        skip = "no --data DIR given (the four MNIST files; see benchmarks/README.md)"
    else:
        gone = [n for n in MNIST_FILES if not any(os.path.isfile(os.path.join(a.data, n + s))
                                                  for s in ("", ".gz"))]
        if gone:
            skip = f"--data {a.data}: missing {', '.join(gone)} (as NAME or NAME.gz)"

    def after(step, log):
        metrics = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(metrics):
            log.write("== metrics.jsonl of the run\n")
            with open(metrics) as f:
                log.write(f.read())
    return Step("train", cmd, TRAIN, 120, skip=skip, after=after, temp=run_dir)


def main_plan(a) -> list:
    gpu, impls = a.device, gpu_impls(a)
    return [
        env_step(a),
        test_step(a, TEST_SELECTION, 180),
        train_step(a),
        bench_step("bench-mnist-gpu", a, "mnist", 128, gpu, impls, "peak,train,infer", 120),
        bench_step("bench-b16-gpu", a, "vit-b16", 64, gpu, "minivit" if a.tiny else impls,
                   "train,infer", 150, steps=10, warmup=3),     # dry run: torch ran just above
        bench_step("bench-mnist-cpu", a, "mnist", 128, "cpu", "minivit", "peak,train,infer", 60),
        bench_step("bench-b16-cpu", a, "vit-b16", 64, "cpu", "minivit", "train,infer", 120,
                   steps=2, warmup=1),
    ]


def extra_plan(a) -> list:
    """What the main plan leaves out: TF32, the per-layer breakdowns, the other 224-pixel
    models, three alternating rounds for steadier ratios, and the whole test suite."""
    gpu, impls = a.device, gpu_impls(a)
    return [
        env_step(a),
        bench_step("bench-mnist-gpu-tf32", a, "mnist", 128, gpu, impls, "train,infer", 90,
                   extra=("--tf32",)),
        bench_step("bench-b16-gpu-tf32", a, "vit-b16", 64, gpu, impls, "train,infer", 120,
                   steps=10, warmup=3, extra=("--tf32",)),
        bench_step("layers-mnist-gpu", a, "mnist", 128, gpu, "minivit", "layers", 60),
        bench_step("layers-b16-gpu", a, "vit-b16", 64, gpu, "minivit", "layers", 90, steps=5,
                   warmup=2, extra=("--layer-reps", "10")),
        bench_step("bench-s16-gpu", a, "vit-s16", 128, gpu, impls, "train,infer", 90, steps=10,
                   warmup=3),
        bench_step("bench-b16-gpu-rounds3", a, "vit-b16", 64, gpu, impls, "train,infer", 150,
                   steps=10, warmup=3, rounds=3),
        test_step(a, None, 240, name="tests-all"),
    ]


PLANS = {"main": main_plan, "extra": extra_plan}


# ---- running the steps ------------------------------------------------------------------------
def child_env(out: str) -> dict:
    """The steps' environment: this checkout importable (installed or not), output unbuffered,
    no bytecode written into the checkout, one run id for all the benchmark records, and
    OUTDIR named so in the records' command lines."""
    path = os.environ.get("PYTHONPATH")
    return stamp.child_env({**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
                            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                            stamp.OUTDIR_VAR: out})


def shown(cmd: list) -> str:
    """The command as typed from the repository root (no machine paths)."""
    out = []
    for c in cmd:
        c = str(c)
        if c == sys.executable:
            c = "python"
        elif os.path.isabs(c) and c.startswith(ROOT + os.sep):
            c = os.path.relpath(c, ROOT)
        out.append(c)
    return shlex.join(out)


def kill_group(p: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, out: str, time_left: float, env: dict) -> dict:
    """Run one step in its own process group under min(its cap, the budget left); returns its
    summary entry. Its output is appended to OUTDIR/step.log."""
    entry = {"name": step.name, "command": shown(step.cmd), "log": step.log, "cap_s": step.cap_s}
    if step.skip:
        return {**entry, "status": "not run", "why": step.skip}
    limit = min(step.cap_s, time_left)
    if time_left < min(MIN_STEP_S, step.cap_s):
        return {**entry, "status": "not run",
                "why": f"out of time: {time_left:.0f} s of the budget left"}
    t0 = time.monotonic()
    path = os.path.join(out, step.log) if step.log else None
    with (open(path, "a", encoding="utf-8", errors="replace") if path else
          tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")) as log:
        log.write(f"== {step.name}: {entry['command']}  (limit {limit:.0f} s)\n")
        log.flush()
        try:
            p = subprocess.Popen(step.cmd, cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            return {**entry, "status": "failed", "why": f"could not start: {e}", "seconds": 0.0}
        try:
            rc = p.wait(limit)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            kill_group(p)
            rc, status = p.returncode, "timeout"
        seconds = time.monotonic() - t0
        log.write(f"== {step.name}: {status} (exit {rc}) in {seconds:.1f} s\n\n")
        if step.after:
            try:
                step.after(step, log)
            except Exception as e:                        # the summary matters more
                log.write(f"== {step.name}: after-step failed: {e!r}\n")
        if path is None:
            log.seek(0)
            entry["output"] = log.read()[-2000:]
    entry.update(status=status, rc=rc, seconds=round(seconds, 1), limit_s=round(limit, 1))
    if status == "timeout":
        entry["why"] = f"killed at its limit of {limit:.0f} s"
    return entry


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def run_plan(steps: list, a) -> dict:
    """Every step in order under the budget; summary.json rewritten after each."""
    t0 = time.monotonic()
    env = child_env(a.out)
    summary = {"plan": a.plan, "device": a.device, "tiny": a.tiny, "budget_s": a.budget,
               "started": stamp.utc_now(), "run": env[stamp.RUN_VAR],
               "command": stamp.command_line(), "files": [], "steps": []}
    write_json(os.path.join(a.out, SUMMARY), summary)
    for step in steps:
        left = a.budget - (time.monotonic() - t0)
        print(f"-- {step.name}: {shown(step.cmd)}", flush=True)
        try:
            entry = run_step(step, a.out, left, env)
        except Exception as e:                            # never lose the summary
            entry = {"name": step.name, "status": "error", "why": repr(e)}
        print(f"   {entry['status']}" + (f" in {entry['seconds']} s" if "seconds" in entry else "")
              + (f": {entry['why']}" if entry.get("why") else ""), flush=True)
        summary["steps"].append(entry)
        summary["elapsed_s"] = round(time.monotonic() - t0, 1)
        summary["files"] = sorted(os.listdir(a.out))
        write_json(os.path.join(a.out, SUMMARY), summary)
    summary["finished"] = stamp.utc_now()
    summary["counts"] = {s: sum(e["status"] == s for e in summary["steps"])
                         for s in ("passed", "failed", "timeout", "not run", "error")}
    summary["files"] = sorted(os.listdir(a.out))
    write_json(os.path.join(a.out, SUMMARY), summary)
    return summary


def print_summary(summary: dict) -> None:
    print(f"\n{summary['plan']} plan on {summary['device']}: {summary.get('elapsed_s', 0)} s of "
          f"a {summary['budget_s']:.0f} s budget; files: {', '.join(summary['files'])}")
    for e in summary["steps"]:
        print(f"  {e['name']:24} {e['status']:8} {e.get('seconds', ''):>7}  {e.get('why', '')}")


# ---- device and versions ----------------------------------------------------------------------
def _section(fn) -> dict:
    try:
        return fn()
    except BaseException as e:                            # an import can raise SystemExit too
        return {"error": f"{type(e).__name__}: {e}"}


def _numpy() -> dict:
    import numpy as np
    return {"version": np.__version__, "blas": stamp.blas_info()}


def _cupy() -> dict:
    import cupy
    rt = cupy.cuda.runtime
    devices = []
    for i in range(rt.getDeviceCount()):
        p = rt.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        devices.append({"name": name, "compute_capability": f"{p['major']}.{p['minor']}",
                        "memory_gib": round(p["totalGlobalMem"] / 2 ** 30, 1),
                        "multiprocessors": p["multiProcessorCount"]})
    out = {"version": cupy.__version__, "cuda_runtime": rt.runtimeGetVersion(),
           "cuda_driver": rt.driverGetVersion(), "devices": devices}
    nccl = {}
    try:
        from cupy.cuda import nccl as cnccl
        nccl["available"] = bool(getattr(cnccl, "available", True))
        if nccl["available"]:
            nccl["version"] = cnccl.get_version()
    except Exception as e:
        nccl = {"available": False, "error": f"{type(e).__name__}: {e}"}
    out["nccl"] = nccl
    buf = io.StringIO()
    try:
        import contextlib
        with contextlib.redirect_stdout(buf):
            cupy.show_config()
        out["show_config"] = buf.getvalue()[-4000:]
    except Exception as e:
        out["show_config"] = f"{type(e).__name__}: {e}"
    return out


def _torch() -> dict:
    import torch
    out = {"version": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if out["cuda_available"]:
        out["device"] = torch.cuda.get_device_name(0)
        out["cudnn"] = torch.backends.cudnn.version()
        try:
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:
            out["nccl"] = f"{type(e).__name__}: {e}"
    return out


def _nvidia_smi() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"error": "nvidia-smi not on the PATH"}
    r = subprocess.run([smi], capture_output=True, text=True, timeout=30)
    return {"output": r.stdout[-4000:], "rc": r.returncode}


def collect_env(path: str) -> None:
    """Device and versions, each part on its own (a part that fails says why), into path."""
    env = {"time": stamp.utc_now(), "python": sys.version, "platform": platform.platform(),
           "git": stamp.git_state()}
    env["numpy"] = _section(_numpy)
    env["cupy"] = _section(_cupy)
    env["torch"] = _section(_torch)
    env["nvidia_smi"] = _section(_nvidia_smi)
    env["pytest_timeout"] = importlib.util.find_spec("pytest_timeout") is not None
    env["nvidia_nccl_package"] = _section(
        lambda: {"installed": importlib.util.find_spec("nvidia.nccl") is not None})
    env["machine"] = stamp.machine()
    env["versions"] = stamp.versions()
    write_json(path, env)
    gpu = env["machine"]["gpu"] or "no GPU"
    print(f"{gpu}; cupy {env['cupy'].get('version', env['cupy'].get('error'))}; "
          f"torch {env['torch'].get('version', env['torch'].get('error'))}; "
          f"nccl {env['cupy'].get('nccl')}")


# ---- command line -----------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", metavar="OUTDIR", help="where the files go (created)")
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                    help="gpu; cpu for the dry run (the GPU steps on the CPU)")
    ap.add_argument("--tiny", action="store_true",
                    help="the smoke model, a few images and steps: the dry run, in seconds")
    ap.add_argument("--data", default=None, metavar="DIR",
                    help="the four MNIST files (NAME or NAME.gz) for the training step")
    ap.add_argument("--plan", choices=sorted(PLANS), default="main")
    ap.add_argument("--only", default=None, help="run only these steps (comma list)")
    ap.add_argument("--skip", default=None, help="leave out these steps (comma list)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (450; 240 with --tiny)")
    ap.add_argument("--per-test-timeout", type=int, default=60,
                    help="pytest-timeout's limit per test, when it is installed (60)")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1,
                    help="threads for minivit on NumPy in the CPU steps (every core)")
    ap.add_argument("--train-script", default=None, metavar="PATH",
                    help="a script to run instead of `python -m minivit.train`, with the same "
                         "flags (the test suite's dry run passes one that accepts its "
                         "synthetic MNIST)")
    ap.add_argument("--list", action="store_true", help="print the plan's steps and exit")
    ap.add_argument("--collect-env", metavar="FILE", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.collect_env is None and a.out is None and not a.list:
        ap.error("OUTDIR is required")
    if a.budget is None:
        a.budget = 240.0 if a.tiny else 450.0
    a.out = os.path.abspath(a.out) if a.out else None
    if a.data:
        a.data = os.path.abspath(a.data)
    if a.train_script:
        a.train_script = os.path.abspath(a.train_script)
    return a


def select(steps: list, a) -> list:
    names = [s.name for s in steps]
    pick = lambda text: [n.strip() for n in text.split(",") if n.strip()]    # noqa: E731
    for text in (a.only, a.skip):
        bad = [n for n in pick(text or "") if n not in names]
        if bad:
            raise SystemExit(f"unknown step(s) {bad}; the {a.plan} plan has {', '.join(names)}")
    if a.only:
        steps = [s for s in steps if s.name in pick(a.only)]
    return [s for s in steps if s.name not in pick(a.skip or "")]


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.collect_env:
        collect_env(a.collect_env)
        return 0
    if a.list:
        a.out = a.out or "OUTDIR"                         # nothing is written
    else:
        os.makedirs(a.out, exist_ok=True)
        for name in (TESTS, TRAIN, BENCH):               # this run's logs; results.jsonl is kept
            if os.path.exists(os.path.join(a.out, name)):
                os.remove(os.path.join(a.out, name))
    plan = PLANS[a.plan](a)
    try:
        steps = select(plan, a)
        if a.list:
            for s in steps:
                print(f"{s.name:24} {s.cap_s:5.0f} s  {shown(s.cmd)}" +
                      (f"  [not run: {s.skip}]" if s.skip else ""))
            return 0
        summary = run_plan(steps, a)
    finally:
        for s in plan:
            if s.temp:
                shutil.rmtree(s.temp, ignore_errors=True)
    print_summary(summary)
    return 0 if all(e["status"] == "passed" for e in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
