"""Measurement, inside one process: a training step or inference of minivit (NumPy or CuPy) or of
the PyTorch reference ViT, transformers' own ViT/DINOv2 loaded from minivit's save_pretrained
folder (TransformersBench), inference of that reference exported to ONNX Runtime (OnnxBench;
its export is onnx_ref.py), the float32 matmul peak, memory (max RSS; the GPU allocators' pools),
the thread limits, and vit_flops, the FLOP count that turns a time into GFLOP/s.

bench.py decides what runs in which process and prints the results; nothing here starts a
measurement process or prints a table (OnnxBench runs its export in a child process).
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:               # this checkout's minivit, installed or not
    sys.path.insert(0, ROOT)
# The PyTorch side is the reference ViT that the parity tests hold to 1e-10 against minivit
# (tests/torch_vit.py): one reference, so the model timed is the model tested. It lives with the
# tests, and benchmarks/ is not a package, so its folder goes on the path.
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)

from minivit import ViT, ViTConfig, backend, parallel  # noqa: E402
from minivit.layers import (BatchRows, cross_entropy_backward, cross_entropy_forward,  # noqa: E402
                            linear_backward, linear_forward)
from minivit.params import ParamDict  # noqa: E402
from minivit.optim import AdamW  # noqa: E402
from minivit.parallel import threads  # noqa: E402

LR, WEIGHT_DECAY = 1e-3, 0.05


# ---- FLOPs ------------------------------------------------------------------------------------
def vit_flops(cfg: ViTConfig, batch: int) -> int:
    """Forward FLOPs of one batch, counting 2*M*N*K for every matmul and nothing else.

    Read from the parameter table (cfg.param_shapes()): each weight matrix w (Din, Dout) is a
    matmul over the rows it reads, 2 * rows * Din * Dout, with rows = P patches for the patch
    embedding, N tokens for a block's qkv, proj, fc1 and fc2, and 1 (the pooled token) for the
    [pre-logits and] head. Attention adds two N x N x D products per block (q k^T and a @ v, all
    heads together). Elementwise work (LayerNorm, softmax, GELU, adds) is left out. A training
    step counts as 3x the forward (backward = two matmuls per forward matmul). This is the
    nominal count of the full model: minivit's CLS-only last block does less work, so its
    GFLOP/s are "effective"."""
    def rows(key: str) -> int:
        if key == "patch_embed.w":
            return cfg.num_patches
        return cfg.num_tokens if key.startswith("blocks.") else 1
    weights = sum(2 * rows(k) * s[0] * s[1] for k, s in cfg.param_shapes().items() if len(s) == 2)
    attention = cfg.depth * 2 * (2 * cfg.num_tokens ** 2 * cfg.dim)
    return batch * (weights + attention)


# ---- clock, memory, threads -------------------------------------------------------------------
def time_ms(fn, reps: int, warmup: int, sync) -> list:
    """Wall times in ms of `reps` calls of fn() after `warmup` untimed ones; sync() waits for the
    device before each clock read."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def rss_now_mb() -> float | None:
    """Resident set size now, MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return None


def rss_peak_mb() -> float:
    """Max resident set size of this process so far, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 2 ** 10


_THREAD_LIMITS = None   # threadpoolctl's limiter, kept alive for the whole process


def limit_threads(blas_threads: int, workers: int | None = None,
                  tune_allocator: bool = False) -> tuple[dict, threads.Runtime]:
    """Pin BLAS/OpenMP pools to `blas_threads` (threadpoolctl when installed; otherwise the
    *_NUM_THREADS variables that bench.py sets before NumPy loads did it) and build and apply
    minivit's CPU runtime as its commands do (threads.Runtime: `blas_threads` cores, the batch
    split over `workers` threads (default: blas_threads), glibc's allocator tuned when
    tune_allocator, which minivit's processes ask for and the others do not, unless
    MINIVIT_NO_MALLOPT=1). Returns (what the pools report and whether the allocator was tuned,
    the runtime: the one minivit's model is to run on)."""
    global _THREAD_LIMITS
    info = {"threads": blas_threads}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        info["pools"] = ["threadpoolctl not installed: set by the *_NUM_THREADS variables"]
    else:
        _THREAD_LIMITS = threadpool_limits(limits=blas_threads)
        info["pools"] = sorted(f"{p['internal_api']} {p.get('version')} x{p['num_threads']}"
                               for p in threadpool_info())
    runtime = threads.Runtime.from_env(cores=blas_threads,
                                       workers=workers if workers is not None else blas_threads)
    if not tune_allocator:
        runtime = dataclasses.replace(runtime, tune_allocator=False)
    runtime.apply()
    info["allocator_tuned"] = runtime.tune_allocator
    return info, runtime


def batch_pieces(batch: int, cfg: ViTConfig, runtime: threads.Runtime | None = None) -> list:
    """The sizes of the batch pieces minivit's forward runs on the worker threads of `runtime`
    (the model's; None: the default a model gets, Runtime.from_env()) (ViT.forward: split on
    NumPy, whole on the GPU)."""
    if backend.xp() is not np:
        return [batch]
    runtime = runtime if runtime is not None else threads.Runtime.from_env()
    return [len(range(batch)[s]) for s in runtime.split_batch(batch, cfg.num_tokens * cfg.dim)]


def host_batch(cfg: ViTConfig, batch: int):
    """Random images (B, C, S, S) float32 and labels (B,) int64 on the host, seed 0."""
    rng = np.random.default_rng(0)
    S, C = cfg.image_size, cfg.in_channels
    x = rng.standard_normal((batch, C, S, S)).astype(cfg.dtype)
    return x, rng.integers(0, cfg.num_classes, batch).astype(np.int64)


# ---- the implementations ---------------------------------------------------------------------
class MinivitBench:
    """minivit on NumPy (CPU) or CuPy (GPU): the model, a batch, and its step functions.
    Under mpiexec (world.size R > 1) each process runs its B / R rows of the batch, and a
    training step adds the in-place all-reduce of the gradients that data-parallel training runs
    (minivit.training.loop.train_step). A backbone (num_classes=0, as DINOv2) runs through a
    linear head of its own, as TransformersBench's does: the model's pooled features, then
    layers.linear (kept outside the model, so that no parameter vector is rebuilt for it)."""
    name = "minivit"

    def __init__(self, cfg: ViTConfig, batch: int, gpu: bool = False, tf32: bool = False,
                 load: bool = False, runtime: threads.Runtime | None = None):
        if gpu:
            backend.use("gpu", tf32=tf32)
        self.world = parallel.training_world("gpu" if gpu else "cpu")
        R, r = self.world.size, self.world.rank
        if batch % R:
            raise SystemExit(f"--batch {batch} is not divisible by --procs {R}")
        self.cfg, self.gpu, self.loaded = cfg, gpu, load
        self.model = load_written(cfg) if load else ViT(cfg, seed=0)
        if runtime is not None:                  # limit_threads', as a command gives its own
            self.model.runtime = runtime
        hx, hy = (host_batch if cfg.num_classes else host_batch_headless)(cfg, batch)
        self.head = None if cfg.num_classes else random_head(cfg, TransformersBench.HEADLESS_CLASSES)
        b = batch // R
        self.rows = (r * b, batch)                                   # this process's rows
        self.x = backend.asarray(hx[r * b:(r + 1) * b])              # (B / R, C, S, S)
        self.y = backend.asarray(hy[r * b:(r + 1) * b])              # (B / R,)
        self.sync = backend.synchronize
        self.xp = backend.xp()
        self._pool_high = 0

    def info(self) -> dict:
        return {"numpy": np.__version__, "backend": backend.name(),
                "params": self.model.num_params(), "loaded": self.loaded,
                "batch_pieces": len(batch_pieces(len(self.x), self.cfg, self.model.runtime)),
                "procs": self.world.size}

    def train_step(self):
        """forward(train=True) + cross-entropy + backward [+ all-reduce] + AdamW step."""
        model, x, y, world = self.model, self.x, self.y, self.world
        opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY, decay=model.decay_keys())
        share = len(y) / self.rows[1]
        head = self.head                          # a backbone's linear head, or None
        if head is not None:
            head_grads = ParamDict.zeros({k: v.shape for k, v in head.items()}, head.flat.dtype,
                                         self.xp)
            head_opt = AdamW(head, lr=LR, weight_decay=WEIGHT_DECAY, decay={"w"})

        def step():
            start, total = self.rows              # this process's rows of the global batch
            masks = BatchRows(int(model.rng.integers(2 ** 63)), start, start + len(y), total)
            out = model.forward(x, train=True, masks=masks)      # (B / R, K) or features (B / R, D)
            logits, c_head = (out, None) if head is None else linear_forward(out, head["w"],
                                                                             head["b"])
            _, cache = cross_entropy_forward(logits, y)
            dlogits = cross_entropy_backward(cache)
            if world.size > 1:
                dlogits *= share
            if head is not None:
                dlogits, head_grads["w"], head_grads["b"] = linear_backward(dlogits, c_head)
            model.backward(dlogits)
            world.allreduce_(model.grads.flat)
            opt.step(model.grads)
            if head is not None:
                world.allreduce_(head_grads.flat)
                head_opt.step(head_grads)
            self._track()
        return step

    def infer_step(self):
        def step():
            out = self.model.forward(self.x, train=False)    # (B / R, K) or features (B / R, D)
            if self.head is not None:
                linear_forward(out, self.head["w"], self.head["b"])   # (B / R, K)
            self.world.barrier()                              # the batch is done when all are
            self._track()
        return step

    def _track(self) -> None:
        if self.gpu:
            self._pool_high = max(self._pool_high,
                                  self.xp.get_default_memory_pool().total_bytes())

    def reset_memory(self) -> None:
        """Start a new high-water mark; on the GPU first hand the pool's cached blocks back
        (e.g. the peak matmul's), so that the mark is this measurement's own."""
        if self.gpu:
            self.xp.get_default_memory_pool().free_all_blocks()
        self._pool_high = 0

    def memory(self) -> dict:
        if self.gpu:
            return {"gpu_peak_mb": self._pool_high / 2 ** 20}
        return {"peak_rss_mb": rss_peak_mb()}

    def matmul_peak(self, n: int, reps: int) -> float:
        """GFLOP/s of an n x n float32 matmul (median of reps) with the backend's BLAS."""
        xp, rng = self.xp, np.random.default_rng(0)
        a, b = (backend.asarray(rng.standard_normal((n, n)), dtype=np.float32) for _ in range(2))
        out = xp.empty((n, n), dtype=np.float32)
        ts = time_ms(lambda: xp.matmul(a, b, out=out), reps, 2, self.sync)
        return 2 * n ** 3 / statistics.median(ts) / 1e6


def torch_device(torch, gpu: bool, tf32: bool, num_threads: int):
    """PyTorch set up for a measurement: its CPU threads, TF32 as asked on the GPU; the device.
    SystemExit when --device gpu finds no CUDA GPU."""
    torch.set_num_threads(num_threads)
    if gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--device gpu: this PyTorch sees no CUDA GPU; install a CUDA "
                             "build of torch or use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return torch.device("cuda" if gpu else "cpu")


class TorchBench:
    """The eager PyTorch reference ViT (tests/torch_vit.py) on the CPU or CUDA, float32. A
    backbone (num_classes=0) gets the 1000-class head the other implementations train it
    through (TransformersBench.HEADLESS_CLASSES), on its pooled features."""
    name = "torch"

    def __init__(self, cfg: ViTConfig, batch: int, gpu: bool = False, tf32: bool = False,
                 sdpa: bool = False, num_threads: int = 2):
        import torch
        from torch_vit import TorchViT
        self.torch, self.cfg, self.gpu, self.sdpa = torch, cfg, gpu, sdpa
        self.dev = torch_device(torch, gpu, tf32, num_threads)
        torch.manual_seed(0)
        headed = cfg if cfg.num_classes else dataclasses.replace(
            cfg, num_classes=TransformersBench.HEADLESS_CLASSES)
        self.model = TorchViT(headed, dtype=torch.float32, sdpa=sdpa).to(self.dev)
        hx, hy = host_batch(headed, batch)
        self.x = torch.from_numpy(hx).to(self.dev)                      # (B, C, S, S)
        self.y = torch.from_numpy(hy).to(self.dev)                      # (B,)
        self.sync = torch.cuda.synchronize if gpu else (lambda: None)

    def info(self) -> dict:
        return {"torch": self.torch.__version__, "sdpa": self.sdpa,
                "params": self.model.num_params()}

    def param_groups(self) -> list:
        """AdamW's groups: weight decay on the same weights as minivit's."""
        return self.model.param_groups(WEIGHT_DECAY)

    def _logits(self, x):
        return self.model(x)                                 # (B, K)

    def train_step(self):
        """The same step: cross-entropy on the logits, backward, AdamW with weight decay on the
        same weights (param_groups)."""
        torch, model, x, y = self.torch, self.model, self.x, self.y
        opt = torch.optim.AdamW(self.param_groups(), lr=LR)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self._logits(x), y)
            loss.backward()
            opt.step()
        return step

    def infer_step(self):
        torch, model, x = self.torch, self.model, self.x
        model.eval()

        def step():
            with torch.no_grad():
                self._logits(x)                              # (B, K)
        return step

    def reset_memory(self) -> None:
        if self.gpu:
            self.torch.cuda.empty_cache()                    # like CuPy's free_all_blocks
            self.torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict:
        if self.gpu:                                         # reserved, as CuPy's pool total
            return {"gpu_peak_mb": self.torch.cuda.max_memory_reserved() / 2 ** 20}
        return {"peak_rss_mb": rss_peak_mb()}

    def matmul_peak(self, n: int, reps: int) -> float:
        torch = self.torch
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(self.dev) for _ in range(2))
        out = torch.empty(n, n, device=self.dev)
        ts = time_ms(lambda: torch.mm(a, b, out=out), reps, 2, self.sync)
        return 2 * n ** 3 / statistics.median(ts) / 1e6


class OnnxBench:
    """ONNX Runtime (CPU) running the PyTorch reference ViT exported to ONNX: TorchBench's
    model, seed and weights, inference only. The export runs once, in a child process, into a
    temporary folder that lives as long as this object (onnx_ref.py says why); the session uses
    every graph optimization and `num_threads` intra-op threads. Before any timing, ORT's
    logits on the input batch are checked against the reference's (onnx_ref.REL_TOL)."""
    name = "onnx"

    def __init__(self, cfg: ViTConfig, batch: int, sdpa: bool = False, num_threads: int = 2):
        import tempfile

        import onnxruntime as ort

        import onnx_ref
        self.ort, self.onnx_ref, self.cfg, self.num_threads = ort, onnx_ref, cfg, num_threads
        self._dir = tempfile.TemporaryDirectory(prefix="minivit-onnx-")
        d = self._dir.name
        self.export = onnx_ref.export_in_subprocess(cfg, batch, d, sdpa=sdpa, threads=num_threads)
        self.session = onnx_ref.make_session(os.path.join(d, onnx_ref.MODEL_FILE), num_threads)
        self.feed = {onnx_ref.INPUT: host_batch(cfg, batch)[0]}            # (B, C, S, S)
        ref = np.load(os.path.join(d, onnx_ref.LOGITS_FILE))               # (B, K)
        self.rel_err = onnx_ref.rel_err(self.session.run(None, self.feed)[0], ref)
        if not self.rel_err <= onnx_ref.REL_TOL:
            raise SystemExit(f"ONNX Runtime's logits differ from the PyTorch reference's by "
                             f"{self.rel_err:.2e} (relative; at most {onnx_ref.REL_TOL:g} "
                             f"expected): the export or this onnxruntime version computes "
                             f"another model; check with tests/test_benchmarks.py")
        self.sync = lambda: None                     # session.run returns when it is done

    def info(self) -> dict:
        return {"onnxruntime": self.ort.__version__, "providers": self.session.get_providers(),
                "ort_threads": self.num_threads, "params": self.export["params"],
                "exporter": self.export["exporter"], "opset": self.export["opset"],
                "export_s": self.export["export_s"], "onnx_rel_err": self.rel_err}

    def infer_step(self):
        session, feed = self.session, self.feed

        def step():
            session.run(None, feed)                          # [(B, K)]
        return step

    def reset_memory(self) -> None:
        pass                                                 # max RSS only: nothing to reset

    def memory(self) -> dict:
        return {"peak_rss_mb": rss_peak_mb()}

    def matmul_peak(self, n: int, reps: int) -> float:
        """GFLOP/s of an n x n float32 matmul in ONNX Runtime itself (a one-node MatMul graph,
        the same threads): its own GEMM, as the others use their BLAS. Each call also returns
        a fresh n x n output, which is small against the n^3 work."""
        session = self.onnx_ref.make_session(self.onnx_ref.matmul_model(n), self.num_threads)
        rng = np.random.default_rng(0)
        feed = {k: rng.standard_normal((n, n)).astype(np.float32) for k in "ab"}
        ts = time_ms(lambda: session.run(None, feed), reps, 2, self.sync)
        return 2 * n ** 3 / statistics.median(ts) / 1e6


class TorchSdpaBench(TorchBench):
    """The same reference with PyTorch's fused attention, F.scaled_dot_product_attention, as
    PyTorch's own ViTs (torchvision, timm, transformers) run by default. Which of the two is
    faster depends on the shape and the machine, so both are measured (benchmarks/results/)."""
    name = "torch-sdpa"

    def __init__(self, cfg: ViTConfig, batch: int, gpu: bool = False, tf32: bool = False,
                 num_threads: int = 2):
        super().__init__(cfg, batch, gpu=gpu, tf32=tf32, sdpa=True, num_threads=num_threads)


def prepare_hf_folder(cfg_dict: dict, hx: np.ndarray, folder: str) -> None:
    """(In a child process) minivit's model of the config, ViT(cfg, seed=0), written to folder
    as a transformers checkpoint, and its output on hx saved as folder/minivit_out.npy."""
    cfg = ViTConfig.from_dict(cfg_dict)
    from minivit.io import save_pretrained
    ref = ViT(cfg, seed=0)
    save_pretrained(ref, folder, format="hf")
    np.save(os.path.join(folder, "minivit_out.npy"),
            backend.to_numpy(ref.forward(backend.asarray(hx), train=False)))


def write_hf_folder(cfg_dict: dict, folder: str) -> None:
    """(In a child process) minivit's model of the config, ViT(cfg, seed=0), written to folder
    as a transformers checkpoint."""
    from minivit.io import save_pretrained
    save_pretrained(ViT(ViTConfig.from_dict(cfg_dict), seed=0), folder, format="hf")


def load_written(cfg: ViTConfig) -> ViT:
    """MinivitBench's model as a user gets a download into minivit: ViT(cfg, seed=0) written
    with save_pretrained(format="hf") by a child process (so this process never holds the
    writer's copy), then read with minivit.io.load_pretrained: the peak memory measured
    includes loading. The loaded parameters are checked equal to the written ones' shapes."""
    import multiprocessing
    import tempfile

    from minivit.io import load_pretrained
    with tempfile.TemporaryDirectory(prefix="minivit-load-") as d:
        child = multiprocessing.get_context("spawn").Process(target=write_hf_folder,
                                                             args=(cfg.to_dict(), d))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"writing the transformers folder failed (exit {child.exitcode})")
        model = load_pretrained(d, dtype=cfg.dtype)
    if model.config.param_shapes() != cfg.param_shapes():
        raise SystemExit(f"load_pretrained read another model than the one written: "
                         f"{model.config} against {cfg}")
    return model


def random_head(cfg: ViTConfig, classes: int) -> ParamDict:
    """MinivitBench's linear head for a backbone: w (D, classes) uniform in +-1/sqrt(D) as
    torch.nn.Linear draws TransformersBench's, b (classes,) zero."""
    rng = np.random.default_rng(0)
    head = ParamDict.zeros({"w": (cfg.dim, classes), "b": (classes,)}, cfg.dtype, backend.xp())
    head["w"] = rng.uniform(-1, 1, (cfg.dim, classes)) / np.sqrt(cfg.dim)
    return head


class TransformersBench(TorchBench):
    """Hugging Face transformers' own model, loaded as a user loads a download: minivit's model
    of the config (ViT(cfg, seed=0), MinivitBench's weights) written with
    minivit.io.save_pretrained(format="hf") into a temporary folder, then read back with
    from_pretrained(attn_implementation="sdpa") in float32. config.json decides the class:
    ViTForImageClassification for a model with a classifier head, the headless backbone
    (Dinov2Model for DINOv2, AutoModel) otherwise, trained through a linear head of
    HEADLESS_CLASSES classes on its pooler_output (the final-LayerNorm CLS token). Before any
    timing its logits (pooler_output when headless) on the input batch are checked against
    minivit's forward (REL_TOL), which a child process computes and writes with the folder, so
    the peak memory measured here is transformers' alone. The train and infer steps, threads
    and memory are TorchBench's."""
    name = "transformers"
    REL_TOL = 1e-4             # max |transformers - minivit| / max |minivit| (float32)
    HEADLESS_CLASSES = 1000

    def __init__(self, cfg: ViTConfig, batch: int, gpu: bool = False, tf32: bool = False,
                 num_threads: int = 2):
        import json
        import tempfile

        import torch
        import transformers

        self.torch, self.transformers, self.cfg, self.gpu, self.sdpa = \
            torch, transformers, cfg, gpu, True
        self.dev = torch_device(torch, gpu, tf32, num_threads)
        transformers.utils.logging.disable_progress_bar()     # no "Loading weights" bar
        hx, hy = (host_batch if cfg.num_classes else host_batch_headless)(cfg, batch)
        with tempfile.TemporaryDirectory(prefix="minivit-hf-") as d:
            # minivit's model, written and run in a child process of its own, so that this
            # process's peak memory is transformers' alone (as for a user who downloaded it)
            import multiprocessing
            child = multiprocessing.get_context("spawn").Process(
                target=prepare_hf_folder, args=(cfg.to_dict(), hx, d))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"writing the transformers folder failed (exit {child.exitcode})")
            want = np.load(os.path.join(d, "minivit_out.npy"))   # (B, K|D)
            with open(os.path.join(d, "config.json")) as f:
                conf = json.load(f)
            self.arch = conf["architectures"][0]
            self.headless = not self.arch.endswith("ForImageClassification")
            if conf.get("image_size") != cfg.image_size:
                raise SystemExit(f"save_pretrained wrote image_size {conf.get('image_size')}, "
                                 f"not {cfg.image_size}")
            auto = (transformers.AutoModel if self.headless
                    else transformers.AutoModelForImageClassification)
            self.model = auto.from_pretrained(d, attn_implementation="sdpa",
                                              dtype=torch.float32).to(self.dev)
        self.model_type = conf["model_type"]
        self.x = torch.from_numpy(hx).to(self.dev)                      # (B, C, S, S)
        self.y = torch.from_numpy(hy).to(self.dev)                      # (B,)
        self.model.eval()
        with torch.no_grad():
            out = self.model(pixel_values=self.x)
            got = (out.pooler_output if self.headless else out.logits).float().cpu().numpy()
        self.rel_err = float(np.abs(got - want).max() / np.abs(want).max())
        if not self.rel_err <= self.REL_TOL:
            raise SystemExit(f"transformers' {type(self.model).__name__} "
                             f"{'pooler_output' if self.headless else 'logits'} differ from "
                             f"minivit's by {self.rel_err:.2e} (relative; at most "
                             f"{self.REL_TOL:g} expected): save_pretrained's layout or this "
                             f"transformers version computes another model")
        self.head = None
        if self.headless:
            torch.manual_seed(0)
            self.head = torch.nn.Linear(cfg.dim, self.HEADLESS_CLASSES).to(self.dev)
        self.sync = torch.cuda.synchronize if gpu else (lambda: None)

    def info(self) -> dict:
        n = sum(p.numel() for p in self.model.parameters())
        if self.model_type.startswith("dinov2"):
            n -= self.cfg.dim                                    # its unused mask token
        return {"torch": self.torch.__version__, "transformers": self.transformers.__version__,
                "sdpa": True, "hf_class": type(self.model).__name__,
                "hf_attn": self.model.config._attn_implementation, "params": n,
                "hf_rel_err": self.rel_err,
                **({"hf_head": f"linear on pooler_output, {self.HEADLESS_CLASSES} classes"}
                   if self.headless else {})}

    def _logits(self, x):
        out = self.model(pixel_values=x)
        return self.head(out.pooler_output) if self.headless else out.logits   # (B, K)

    def param_groups(self) -> list:
        """As TorchBench's: weight decay on the weight matrices (linear weights and the
        patch-embedding kernel) only; none on biases, LayerNorm and LayerScale parameters, the
        class and mask tokens or the position table."""
        named = list(self.model.named_parameters())
        if self.head is not None:
            named += [("head." + k, p) for k, p in self.head.named_parameters()]
        decay = [p for k, p in named if k.endswith(".weight") and p.ndim >= 2]
        ids = {id(p) for p in decay}
        return [{"params": decay, "weight_decay": WEIGHT_DECAY},
                {"params": [p for _, p in named if id(p) not in ids], "weight_decay": 0.0}]


def host_batch_headless(cfg: ViTConfig, batch: int):
    """host_batch for a headless model: labels of TransformersBench.HEADLESS_CLASSES classes."""
    rng = np.random.default_rng(0)
    S, C = cfg.image_size, cfg.in_channels
    x = rng.standard_normal((batch, C, S, S)).astype(cfg.dtype)
    return x, rng.integers(0, TransformersBench.HEADLESS_CLASSES, batch).astype(np.int64)


BENCHES = {"minivit": MinivitBench, "torch": TorchBench, "torch-sdpa": TorchSdpaBench,
           "transformers": TransformersBench, "onnx": OnnxBench}


def time_step(bench, what: str, batch: int, steps: int, warmup: int) -> dict:
    """Time bench's 'train' or 'infer' step: ms/step (median of `steps` after `warmup`),
    images/s, GFLOP/s and peak memory."""
    step = bench.train_step() if what == "train" else bench.infer_step()
    bench.reset_memory()
    ts = time_ms(step, steps, warmup, bench.sync)
    ms = statistics.median(ts)
    flops = vit_flops(bench.cfg, batch) * (3 if what == "train" else 1)
    return {"what": what, "ms": ms, "ms_min": min(ts), "ms_max": max(ts), "steps": len(ts),
            "warmup": warmup, "ms_all": [round(t, 4) for t in ts],
            "images_per_s": batch / ms * 1e3, "gflop_per_step": flops / 1e9,
            "gflops": flops / ms / 1e6, **bench.memory()}
