"""minivit benchmarks: a training step and inference against the PyTorch reference ViT of the
same shape (and inference against that reference exported to ONNX Runtime), a per-layer
breakdown of minivit's step, and the machine's float32 matmul peak.

    python benchmarks/bench.py --config mnist --impl all --what train --rounds 3
    python benchmarks/bench.py --config mnist-p4 --impl all --what train,infer,peak
    python benchmarks/bench.py --config mnist --what layers
    python benchmarks/bench.py --smoke                    # every part on a tiny model, seconds
    python benchmarks/bench.py --config vit-b16 --device gpu --impl all --batch 64
    python benchmarks/bench.py --config vit-b16 --image-size 448 --what infer --batch 1
    python benchmarks/bench.py --config mnist --impl onnx --what infer   # pip install -e '.[onnx]'
    python benchmarks/bench.py --config vit-b16 --batch 1 --impl minivit,transformers --what infer
    python benchmarks/bench.py --config mnist --impl all --what train,infer --json  # keep them

This file is the orchestration: the command line, one fresh process per measurement (alternating
minivit, torch [and onnx] rounds), the wait for a quiet machine, the aggregation and the output:
the table, and with --json (or --results FILE) every record stamped (stamp.py: machine, versions,
commit, date, command) and appended to benchmarks/results/<machine tag>.jsonl as it is measured.
measure.py measures (step timing, matmul peak, memory, threads, vit_flops); layers.py is the
per-layer breakdown; the PyTorch reference is tests/torch_vit.py; onnx_ref.py exports it for
ONNX Runtime (the onnx implementation: CPU, inference and peak only; train and layers are
reported as skipped); the transformers implementation is transformers' own model class loaded
from minivit's model written with minivit.io.save_pretrained(format="hf") (measure.py's
TransformersBench: its logits checked against minivit's before timing).

Method (benchmarks/README.md has the long form):
- train step = forward(train=True) + cross-entropy + backward + AdamW step; inference =
  forward(train=False) (torch: eval mode under torch.no_grad(); onnx: session.run of the
  exported reference, same weights). Random images, fixed seeds.
  ms/step is the median over --steps timed steps after --warmup untimed ones.
- GFLOP/s = vit_flops(cfg, batch) (x3 for training) / time: matmul FLOPs only.
- OpenBLAS/OpenMP worker threads spin after each call and slow whatever runs next, so
  `--impl all` runs every measurement in its own fresh process (thread variables set before
  NumPy loads), alternating minivit, torch, minivit, torch for --rounds, and reports the median
  of the rounds and the minivit/torch throughput ratio from that one sitting.
- Peak memory: the process's max RSS on the CPU (each measurement is its own process under
  --impl all); on the GPU the high water of the memory each library's caching allocator holds:
  CuPy's pool total_bytes() / torch.cuda.max_memory_reserved() (both include cached free blocks).
- A measurement process hands its records to the command that started it as JSON lines on its
  standard output (--results -), one as each is measured; a process that fails leaves a
  "failed" record and the others go on (the exit status is then 1).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from stamp import THREAD_VARS  # stamp loads no NumPy: the variables are set after it


def _threads_from_argv(argv: list) -> int:
    """The --threads value in argv (default 2), read before argparse runs."""
    for i, a in enumerate(argv):
        v = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else \
            a.split("=", 1)[1] if a.startswith("--threads=") else None
        if v is not None:
            return int(v) if v.isdigit() and int(v) > 0 else 2   # argparse reports a bad value
    return 2


if __name__ == "__main__":
    # BLAS and OpenMP read these once, when NumPy/PyTorch load: set them before the imports below.
    for _v in THREAD_VARS:
        os.environ[_v] = str(_threads_from_argv(sys.argv[1:]))

import layers  # noqa: E402  (benchmarks/ is not a package: its modules import each other by name)
import measure  # noqa: E402
import onnx_ref  # noqa: E402
import stamp  # noqa: E402
from minivit import ViTConfig  # noqa: E402
from minivit.config import model_config  # noqa: E402

# The models benchmarked: --config names one of minivit.config.MODELS (model_config), with the
# fields this benchmark keeps different. Its dinov2-s14 keeps the shape its records were first
# measured with: a 1000-class head, the tanh GELU, no LayerScale (MODELS' is the headless
# backbone with the exact GELU and LayerScale).
CONFIGS = {
    "mnist": {},
    "mnist-p4": {},
    "vit-s16": {},
    "vit-b16": {},
    "dinov2-s14": dict(num_classes=1000, layer_scale=None, gelu="tanh"),
    "dinov2-b14": {},                            # MODELS' backbone, trained through a linear head
    "tiny": {},
}
WHATS = ("peak", "train", "infer", "layers")     # the order they run in
IMPLS = tuple(measure.BENCHES)                   # minivit, torch, torch-sdpa, transformers, onnx


def bench_config(name: str, image_size: int | None = None) -> ViTConfig:
    """The ViTConfig of --config `name` (model_config with CONFIGS' overrides), for images of
    image_size x image_size when given (any size the patch divides: the weights are random, so
    the position table is simply built for that many patches)."""
    over = dict(CONFIGS[name])
    if image_size is not None:
        over["image_size"] = image_size
    try:
        return model_config(name, **over)
    except ValueError as e:
        raise SystemExit(f"--config {name} --image-size {image_size}: {e}") from None


def config_label(name: str, image_size: int | None) -> str:
    """The records' "config": the name, with @S when --image-size changes the model's image
    size (a row of its own in the results table)."""
    if image_size is None or image_size == model_config(name, **CONFIGS[name]).image_size:
        return name
    return f"{name}@{image_size}"


# ---- one process: the measurements ------------------------------------------------------------
def make_bench(args, cfg: ViTConfig, runtime=None):
    """The implementation --impl names, built for --batch on --device (minivit's model on
    `runtime`, limit_threads')."""
    gpu = args.device == "gpu"
    if args.impl in ("torch", "torch-sdpa", "transformers"):
        return measure.BENCHES[args.impl](cfg, args.batch, gpu=gpu, tf32=args.tf32,
                                          num_threads=args.threads)
    if args.impl == "onnx":                  # the torch child's model and threads, CPU only
        return measure.OnnxBench(cfg, args.batch, num_threads=args.threads)
    return measure.MinivitBench(cfg, args.batch, gpu=gpu, tf32=args.tf32, load=args.load,
                                runtime=runtime)


def unsupported(impl: str, what: str, device: str) -> str | None:
    """Why `impl` does not measure `what` on `device`, or None when it does. ONNX Runtime runs
    the exported forward pass on the CPU here: inference and the matmul peak only. torch-sdpa
    differs from torch in its attention only, and transformers runs on torch: their matmul peak
    is torch's."""
    if impl in ("torch-sdpa", "transformers") and what == "peak":
        return "peak not measured: the same matmul as torch"
    if impl != "onnx":
        return None
    if device == "gpu":
        return "CPU only here (onnxruntime's CPUExecutionProvider); not measured with --device gpu"
    if what in ("train", "layers"):
        return f"{what} not measured: inference only (ONNX Runtime runs the exported forward pass)"
    return None


def unavailable(impl: str) -> str | None:
    """Why `impl` cannot run in this environment (a package is missing), or None. Imports what
    the measuring process itself uses (torch, onnxruntime) so that it counts in rss_base; the
    ONNX export's packages are only looked up (the export runs in a child process)."""
    if impl in ("torch", "torch-sdpa", "transformers"):
        try:        # first, so that its OpenMP pool is limited and counted in rss_base
            importlib.import_module("torch")
        except ImportError:
            return "torch not installed"
    if impl == "transformers":
        gone = transformers_missing()
        if gone:
            return f"{', '.join(gone)} not installed ({TRANSFORMERS_INSTALL})"
        importlib.import_module("transformers")
    if impl == "onnx":
        gone = onnx_ref.missing()
        if gone:
            return f"{', '.join(gone)} not installed ({onnx_ref.INSTALL})"
        importlib.import_module("onnxruntime")
    return None


TRANSFORMERS_REQUIRES = ("torch", "transformers", "safetensors")
TRANSFORMERS_INSTALL = "pip install torch transformers safetensors"


def transformers_missing() -> list:
    """The packages --impl transformers needs that are not installed (looked up, not imported)."""
    return [m for m in TRANSFORMERS_REQUIRES if importlib.util.find_spec(m) is None]


# meta keys that a measurement record or its stamp holds already: the rest is its "setup"
SETUP_SKIP = {"what", "impl", "config", "batch", "device", "threads", "python", "cpu", "numpy",
              "torch", "onnxruntime", "transformers"}


def run_local(args, cfg: ViTConfig, whats: list, emit=lambda r: None) -> list:
    """Every measurement of one implementation in this process, each record passed to emit()
    as soon as it is measured; returns the records. Every measurement record carries the
    process's setup (the meta record's details: backend, parameters, batch pieces, pools)."""
    base = {"impl": args.impl, "config": args.label, "image_size": cfg.image_size,
            "batch": args.batch, "device": args.device, "threads": args.threads}
    records = []

    def out(r: dict) -> dict:
        records.append(r)
        emit(r)
        return r

    def skipped(reason: str, what: str | None = None) -> dict:
        print(f"{args.impl}: {reason}; skipped", file=sys.stderr)
        return out({**base, "what": "skipped", "reason": reason, **({"of": what} if what else {})})

    reason = unavailable(args.impl)
    if reason:
        skipped(reason)
        return records
    todo = []
    for what in whats:
        reason = unsupported(args.impl, what, args.device)
        if reason:
            skipped(reason, what)
        else:
            todo.append(what)
    if not todo:                                          # nothing left: build no model
        return records
    thread_info, runtime = measure.limit_threads(args.threads, args.workers,
                                                 tune_allocator=args.impl == "minivit")
    rss_base = measure.rss_now_mb()                       # after the imports, before the model
    try:
        impl = make_bench(args, cfg, runtime)
    except onnx_ref.Unavailable as e:                     # the export child could not import
        skipped(str(e))
        return records
    meta = {**base, "what": "meta", **impl.info(), **thread_info, "rss_base_mb": rss_base,
            "python": platform.python_version(), "cpu": stamp.cpu_name(), "tf32": args.tf32,
            "wait_quiet_s": args.wait_quiet}
    setup = {k: v for k, v in meta.items() if k not in SETUP_SKIP}
    out(meta)
    peak = args.peak_gflops
    for what in todo:
        if what == "layers" and args.impl != "minivit":
            print(f"per-layer breakdown is minivit-only; skipped for {args.impl}", file=sys.stderr)
            continue
        waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
        load = OtherLoad()
        if what == "peak":
            rs = [{"what": "peak", "n": args.peak_n, "reps": args.peak_reps,
                   "gflops": impl.matmul_peak(args.peak_n, args.peak_reps)}]
            peak = max(peak or 0.0, rs[0]["gflops"])
        elif what in ("train", "infer"):
            rs = [measure.time_step(impl, what, args.batch, args.steps, args.warmup)]
        else:
            rs = layers.breakdown(impl, args.batch, args.layer_reps, args.steps, args.warmup)
        others = load.cores()
        for r in rs:
            r = {**base, **r, "other_cores": others, "waited_s": waited, "setup": setup}
            if peak and r["what"] in ("train", "infer"):
                r["frac_peak"] = r["gflops"] / peak
            out(r)
    return records


class OtherLoad:
    """Cores kept busy by other processes since construction: every busy core (/proc/stat)
    minus this process's own CPU time (os.times, all its threads). None off Linux or when
    less than half a second has passed.
    Other work stalls BLAS/OpenMP threads badly, so each measurement records it."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        t = os.times()
        return sum(v), v[3] + v[4], t.user + t.system, time.perf_counter()

    def cores(self) -> float | None:
        end = self._snapshot()
        if end is None or self.start is None or end[3] - self.start[3] < 0.5:
            return None                                  # ticks are 10 ms: too short to tell
        total, idle = end[0] - self.start[0], end[1] - self.start[1]
        busy = (os.cpu_count() or 1) * (1 - idle / total)      # cores busy, this process included
        own = (end[2] - self.start[2]) / (end[3] - self.start[3])
        return max(0.0, busy - own)


QUIET = 0.15    # cores of other work below which the machine counts as idle


def wait_quiet(max_s: float) -> float:
    """Sleep until other processes keep fewer than QUIET cores busy (0.5 s samples), at most
    max_s seconds; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        load = OtherLoad()
        time.sleep(0.5)
        c = load.cores()
        if c is None or c < QUIET:
            break
    return time.perf_counter() - t0


# ---- --impl all: fresh processes, alternating ---------------------------------------------------
def child_command(args, impl: str, what: str) -> list:
    """The command line that measures `what` for `impl` in a fresh process, which hands its
    records back as JSON lines on its standard output (--results -)."""
    split = impl == "minivit" and what in ("train", "infer")
    threads = args.threads // args.procs if split else args.threads
    cmd = [sys.executable, os.path.abspath(__file__), "--impl", impl, "--what", what,
           "--results", "-",
           "--config", args.config, "--batch", str(args.batch), "--threads", str(max(1, threads)),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--layer-reps", str(args.layer_reps), "--peak-n", str(args.peak_n),
           "--peak-reps", str(args.peak_reps), "--wait-quiet", str(args.wait_quiet)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.image_size is not None:
        cmd += ["--image-size", str(args.image_size)]
    return cmd + ["--load"] * args.load + ["--smoke"] * args.smoke + ["--tf32"] * args.tf32


class ChildFailed(Exception):
    """A measurement process exited with an error; `records` are those it handed back first."""

    def __init__(self, cmd: list, returncode: int, tail: str, records: list):
        super().__init__(f"benchmark process failed (exit {returncode}): {' '.join(cmd)}\n{tail}")
        self.cmd, self.returncode, self.tail, self.records = cmd, returncode, tail, records


def run_child(cmd: list, threads: int, procs: int = 1, emit=lambda r: None) -> list:
    """Run one measurement process (or `procs` of them under mpiexec, splitting the threads)
    with the thread variables set before its imports; each record it prints goes to emit() as
    it arrives. Returns the records; raises ChildFailed when the process fails."""
    if procs > 1:
        from minivit.parallel import launch
        if launch.mpiexec_path() is None or not launch.mpi_available():
            raise SystemExit("--procs needs MPI: pip install -e .[mpi]")
        cmd = [launch.mpiexec_path(), "-n", str(procs)] + cmd
        threads = max(1, threads // procs)
    env = stamp.child_env({**os.environ, **{v: str(threads) for v in THREAD_VARS}})
    records = []
    with tempfile.TemporaryFile("w+") as err:            # a file: no pipe to fill and block on
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        for line in p.stdout:
            if line.startswith("{"):
                try:
                    r = json.loads(line)
                except ValueError:                        # a line cut short by a crash
                    continue
                records.append(r)
                emit(r)
        rc = p.wait()
        if rc:
            err.seek(0)
            raise ChildFailed(cmd, rc, err.read()[-3000:], records)
    return records


def installed_impls() -> list:
    """minivit; torch and torch-sdpa when torch is installed; transformers when torch,
    transformers and safetensors are; onnx when onnxruntime and the export's packages
    (onnx_ref.REQUIRES: onnx, onnxscript, torch) are."""
    if importlib.util.find_spec("torch") is None:
        print("torch not installed; skipped", file=sys.stderr)
        return ["minivit"]
    out = ["minivit", "torch", "torch-sdpa"]
    gone = transformers_missing()
    if gone:
        print(f"transformers: {', '.join(gone)} not installed ({TRANSFORMERS_INSTALL}); "
              f"skipped", file=sys.stderr)
    else:
        out.append("transformers")
    gone = onnx_ref.missing()
    if gone:
        print(f"onnx: {', '.join(gone)} not installed ({onnx_ref.INSTALL}); skipped",
              file=sys.stderr)
    else:
        out.append("onnx")
    return out


def run_all(args, whats: list, emit) -> list:
    """Each (what, impl) in its own process; train/infer alternate minivit, torch [, onnx] for
    --rounds. An (impl, what) that unsupported() rules out starts no process: one "skipped"
    record says why; a process that fails leaves a "failed" record (its exit status and the
    end of its error output) and the others still run. Every record goes to emit() as it
    arrives. Returns the per-round records followed by aggregates (medians) and ratios."""
    impls = args.impls
    records = []

    def relay(r: dict, rnd=None) -> None:
        if rnd is not None:
            r["round"] = rnd
        if "command" in r:                                # the child's; the stamp gets ours
            r["child_command"] = r.pop("command")
        emit(r)
        records.append(r)

    def child(impl, what, rnd=None):
        reason = unsupported(impl, what, args.device)
        if reason:
            if rnd in (None, 0):                          # once, not every round
                relay({"impl": impl, "what": "skipped", "of": what, "reason": reason})
            return
        procs = args.procs if impl == "minivit" and what in ("train", "infer") else 1
        try:
            run_child(child_command(args, impl, what), args.threads, procs,
                      lambda r: relay(r, rnd))
        except ChildFailed as e:
            print(f"{impl} {what}: {e}", file=sys.stderr)
            relay({"impl": impl, "what": "failed", "of": what, "config": args.label,
                   "batch": args.batch, "device": args.device, "exit": e.returncode,
                   "error": e.tail[-1500:], "child_command": stamp.command_line(e.cmd[1:])}, rnd)

    if "peak" in whats:
        for impl in impls:
            child(impl, "peak")
    for what in (w for w in ("train", "infer") if w in whats):
        for rnd in range(args.rounds):
            for impl in impls:
                child(impl, what, rnd)
    if "layers" in whats:
        child("minivit", "layers")
    agg = aggregate(records, impls, args)
    for r in agg:
        emit(r)
    return records + agg


def aggregate(records: list, impls: list, args) -> list:
    """Median over rounds per (what, impl); ratios minivit/torch and minivit/onnx of images/s
    (= other ms / minivit ms) per what, for those measured; fraction of the machine peak (the
    best matmul peak measured). An aggregate keeps its rounds' setup, machine and versions."""
    peaks = [r["gflops"] for r in records if r["what"] == "peak"]
    peak = max(peaks) if peaks else args.peak_gflops
    where = {"config": args.label, "batch": args.batch, "device": args.device,
             "threads": args.threads}
    out = []
    for what in ("train", "infer"):
        ms = {}
        for impl in impls:
            rs = [r for r in records if r["what"] == what and r["impl"] == impl]
            if not rs:
                continue
            m = statistics.median(r["ms"] for r in rs)
            mem = {k: statistics.median(r[k] for r in rs)
                   for k in ("peak_rss_mb", "gpu_peak_mb") if k in rs[0]}
            flops = rs[0]["gflop_per_step"]
            a = {"what": what, "impl": impl, "aggregate": True, **where,
                 "rounds": len(rs), "ms_rounds": [r["ms"] for r in rs], "ms": m,
                 "images_per_s": args.batch / m * 1e3, "gflop_per_step": flops,
                 "gflops": flops / m * 1e3, **mem,
                 "other_cores_rounds": [r.get("other_cores") for r in rs]}
            for k in ("steps", "setup", "machine"):
                if k in rs[0]:
                    a[k] = rs[0][k]
            if any("versions" in r for r in rs):          # what the measuring processes ran
                a["versions"] = {k: v for r in rs for k, v in r.get("versions", {}).items()}
            if peak:
                a["frac_peak"] = a["gflops"] / peak
            out.append(a)
            ms[impl] = m
        ratios = {f"minivit_over_{k}": v / ms["minivit"] for k, v in ms.items()
                  if k != "minivit" and "minivit" in ms}
        if ratios:
            out.append({"what": "ratio", "of": what, "aggregate": True, **where, **ratios})
    return out


# ---- the table ----------------------------------------------------------------------------------
def print_tables(records: list, args, cfg: ViTConfig) -> None:
    metas = [r for r in records if r["what"] == "meta"]
    print(f"config {args.label}: {cfg.image_size}x{cfg.image_size}x{cfg.in_channels}, patch "
          f"{cfg.patch_size}, dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, mlp "
          f"{cfg.mlp_ratio:g}, {cfg.num_classes} classes | batch {args.batch} | device "
          f"{args.device} | threads {args.threads}")
    print(f"forward {measure.vit_flops(cfg, args.batch) / 1e9:.3f} GFLOP/batch (train 3x), matmuls only")
    if args.procs > 1:
        print(f"minivit's train/infer ran as {args.procs} processes under mpiexec, each on "
              f"{args.batch // args.procs} images with {max(1, args.threads // args.procs)} "
              f"thread(s); a training step includes the all-reduce")
    seen = set()
    for m in metas:
        line = {k: m[k] for k in ("impl", "numpy", "torch", "transformers", "onnxruntime",
                                  "backend", "params", "pools", "procs", "batch_pieces", "sdpa",
                                  "hf_class", "hf_head", "hf_rel_err", "providers",
                                  "ort_threads", "opset", "onnx_rel_err", "cpu") if k in m}
        for k in ("onnx_rel_err", "hf_rel_err"):   # logits against the reference's / minivit's
            if k in line:
                line[k] = f"{line[k]:.1e}"
        key = json.dumps(line, sort_keys=True)
        if key not in seen:
            seen.add(key)
            print("  " + ", ".join(f"{k}={v}" for k, v in line.items()))
    others = [r["other_cores"] for r in records if r.get("other_cores") is not None]
    if others:
        print(f"  cores kept busy by other processes during the measurements: {min(others):.2f}"
              f"-{max(others):.2f} of {os.cpu_count()}")
        if max(others) > 2 * QUIET:
            print(f"  WARNING: other work ran during some measurements (> {2 * QUIET:.1f} cores); "
                  f"their times are inflated: rerun on an idle machine (see --wait-quiet)")
    for line in dict.fromkeys(f"{r['impl']}: {r['reason']}; skipped" for r in records
                              if r["what"] == "skipped"):
        print(line)
    for r in records:
        if r["what"] == "failed":
            print(f"{r['impl']} {r['of']}: FAILED (exit {r['exit']}); its error output is on "
                  f"stderr and in the record")

    peaks = [r for r in records if r["what"] == "peak"]
    for r in peaks:
        print(f"float32 matmul peak ({r['impl']}, n={r['n']}, median of {args.peak_reps}): "
              f"{r['gflops']:.1f} GFLOP/s")
    peak = max((r["gflops"] for r in peaks), default=args.peak_gflops)

    rows = [r for r in records if r["what"] in ("train", "infer")
            and (r.get("aggregate") or not multi_process(args))]
    if rows:
        mem_key = "gpu_peak_mb" if args.device == "gpu" else "peak_rss_mb"
        mem_name = "GPU peak MB" if args.device == "gpu" else "max RSS MB"
        print()
        print(f"{'what':6} {'impl':12} {'ms/step':>9} {'img/s':>9} {'GFLOP/s':>8} {'of peak':>8} "
              f"{mem_name:>11}  rounds (ms) [cores used by others]")
        for r in rows:
            fp = f"{r['gflops'] / peak:.0%}" if peak else "-"
            o = r.get("other_cores_rounds", [r.get("other_cores")])
            rounds = " ".join(f"{v:.2f}" for v in r.get("ms_rounds", [r["ms"]]))
            rounds += " [" + " ".join("?" if c is None else f"{c:.1f}" for c in o) + "]"
            mem = r.get(mem_key)
            print(f"{r['what']:6} {r['impl']:12} {r['ms']:9.2f} {r['images_per_s']:9.0f} "
                  f"{r['gflops']:8.1f} {fp:>8} {mem if mem is None else round(mem):>11}  {rounds}")
        for r in records:
            if r["what"] == "ratio":
                for k, v in r.items():
                    if k.startswith("minivit_over_"):
                        print(f"{r['of']}: minivit/{k[len('minivit_over_'):]} throughput = "
                              f"{v:.2f}x (medians of {args.rounds} alternating rounds)")

    layers = [r for r in records if r["what"] == "layers"]
    if layers:
        print()
        print(f"minivit per-layer breakdown, ms per step (median of {args.layer_reps} calls x "
              f"calls per step)")
        w = max(22, max(len(r["layer"]) for r in layers))          # name column width
        print(f"{'layer':{w}} {'calls':>5} {'fwd ms':>8} {'bwd ms':>8} {'total':>8} {'share':>6}")
        fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"
        for r in layers:
            print(f"{r['layer']:{w}} {r['calls']:5d} {fmt(r['fwd_ms'])} {fmt(r['bwd_ms'])} "
                  f"{r['ms']:8.3f} {r['share']:6.1%}")
        for t in (r for r in records if r["what"] == "layers_total"):
            print(f"{'sum of layers':{w}} {'':5} {'':8} {'':8} {t['sum_ms']:8.3f}")
            print(f"{'measured train step':{w}} {'':5} {'':8} {'':8} {t['train_step_ms']:8.3f}"
                  f"  (difference: residual adds, cls/pos, grad sums, last block's "
                  f"CLS-only saving)")
            print(f"batch pieces on worker threads: {t['chunks']}")


# ---- command line ----------------------------------------------------------------------------
def multi_process(args) -> bool:
    """Whether the measurements run in child processes (several implementations, or --procs),
    each record relayed from them, rather than in this one."""
    return len(args.impls) > 1 or args.procs > 1 or args.impl == "all"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default=None,
                    help="model shape (default mnist; tiny with --smoke)")
    ap.add_argument("--image-size", type=int, default=None, metavar="S",
                    help="images of S x S (any size the patch divides; default the config's): "
                         "more tokens, the same weights' shapes but the position table's")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default 128)")
    ap.add_argument("--load", action="store_true",
                    help="minivit's model as a user loads a download: written in transformers' "
                         "layout by a child process and read with minivit.io.load_pretrained, "
                         "so its peak memory includes loading (as transformers' always does)")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS/OpenMP threads (torch.set_num_threads and ONNX Runtime's "
                         "intra-op threads too) (default 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="minivit batch-split worker threads (default: --threads)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--procs", type=int, default=1,
                    help="minivit as this many data-parallel processes under mpiexec, each with "
                         "--threads / procs threads and its share of the batch (default 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds when several implementations run (default 3)")
    ap.add_argument("--impl", default="minivit",
                    help="minivit, torch (the PyTorch reference, attention written out), "
                         "torch-sdpa (the same with F.scaled_dot_product_attention), "
                         "transformers (transformers' ViTForImageClassification / Dinov2Model "
                         "loaded from minivit's save_pretrained folder, SDPA attention), "
                         "onnx (the "
                         "reference exported to ONNX Runtime: CPU inference and peak only), a "
                         "comma list of them, or all installed (default minivit)")
    ap.add_argument("--what", default=None,
                    help="comma list of train, infer, layers, peak, or all (default train)")
    ap.add_argument("--layer-reps", type=int, default=None, help="calls per layer timing (30)")
    ap.add_argument("--peak-n", type=int, default=None,
                    help="matmul size for the peak (2048 CPU, 8192 GPU)")
    ap.add_argument("--peak-reps", type=int, default=None, help="peak matmul repetitions (10)")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="known float32 peak for 'of peak' when --what has no peak")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="before each measurement wait up to S seconds until other processes "
                         "use < 0.15 cores (60; 0 with --smoke; 0 turns it off)")
    ap.add_argument("--tf32", action="store_true",
                    help="TF32 matmuls on the GPU (minivit: backend.use('gpu', tf32=True); "
                         "torch: torch.backends.cuda.matmul.allow_tf32)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny model, 3 steps, every part: checks the script in seconds")
    ap.add_argument("--json", action="store_true",
                    help="keep the results: append every record, stamped (machine, versions, "
                         "commit, date, command), to benchmarks/results/<machine tag>.jsonl as "
                         "it is measured (the table is still printed)")
    ap.add_argument("--results", default=None, metavar="FILE",
                    help="append the records to FILE instead (implies --json); '-': JSON lines "
                         "on standard output instead of the table")
    args = ap.parse_args(argv)
    args.impls = parse_impls(args.impl)
    if len(args.impls) == 1 and args.impl != "all":
        args.impl = args.impls[0]
    args.json = args.json or args.results is not None
    s = args.smoke
    gpu = args.device == "gpu"
    defaults = dict(config="tiny" if s else "mnist", batch=32 if s else 128,
                    steps=3 if s else 30, warmup=1 if s else 5, rounds=1 if s else 3,
                    what="all" if s else "train", layer_reps=3 if s else 30,
                    peak_n=256 if s else (8192 if gpu else 2048), peak_reps=3 if s else 10,
                    wait_quiet=0.0 if s else 60.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.image_size is not None and args.image_size < 1:
        raise SystemExit(f"--image-size must be >= 1, got {args.image_size}")
    args.label = config_label(args.config, args.image_size)
    for k in ("batch", "threads", "steps", "rounds", "layer_reps", "peak_n", "peak_reps"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    return args


def parse_impls(text: str) -> list:
    """--impl: one implementation, a comma list, or all (every one installed)."""
    asked = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in asked if w not in IMPLS + ("all",)]
    if bad or not asked:
        raise SystemExit(f"--impl {text!r}: unknown {bad}; use one of {', '.join(IMPLS)}, a "
                         f"comma list of them, or all")
    if "all" in asked:
        return installed_impls()
    return list(dict.fromkeys(asked))


def parse_whats(text: str) -> list:
    asked = {w.strip() for w in text.split(",") if w.strip()}
    bad = asked - set(WHATS) - {"all"}
    if bad or not asked:
        raise SystemExit(f"--what {text!r}: unknown {sorted(bad)}; use a comma list of "
                         f"{', '.join(WHATS)} or all")
    return [w for w in WHATS if w in asked or "all" in asked]


def main(argv=None) -> list:
    """Run the benchmarks the arguments ask for; print the table, keep the stamped records
    (--json / --results) and return them."""
    args = parse_args(argv)
    cfg = bench_config(args.config, args.image_size)
    whats = parse_whats(args.what)
    if cfg.image_size >= 224 and args.device == "cpu" and args.results != "-":
        print(f"note: {args.config} on the CPU is slow ({measure.vit_flops(cfg, 1) / 1e9:.0f} "
              f"GFLOP per image forward); consider --device gpu or a small --batch",
              file=sys.stderr)
    from minivit import parallel
    if parallel.launched_size() > 1 and not parallel.world().is_root:
        run_local(args, cfg, whats)                       # one of --procs' processes: rank 0 reports
        return []
    sink = stamp.Sink(args.results, script="bench.py") if args.json else None
    emit = sink.write if sink else (lambda r: r)
    try:
        if multi_process(args):                           # --procs: the processes are children
            records = run_all(args, whats, emit)
        else:
            records = run_local(args, cfg, whats, emit)
    finally:
        if sink:
            sink.close()
    if args.results != "-":
        print_tables(records, args, cfg)
        if sink:
            print(f"records appended to {os.path.relpath(sink.path)}")
    return records


if __name__ == "__main__":
    sys.exit(1 if any(r["what"] == "failed" for r in main()) else 0)
