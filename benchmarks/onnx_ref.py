"""The ONNX Runtime side of the benchmark: the PyTorch reference ViT (tests/torch_vit.py), built
with TorchBench's seed and therefore its weights, exported to ONNX and run by ONNX Runtime.

    export_reference(cfg, batch, out_dir)     # in this process: model.onnx, torch_logits.npy
    export_in_subprocess(cfg, batch, out_dir) # the same in a fresh process (what the bench uses)
    session = make_session(path, threads)     # ORT_ENABLE_ALL, intra-op threads = threads

The exporter is torch.onnx.export(dynamo=True), PyTorch's default and recommended one since 2.9:
it traces the model with torch.export and translates it with onnxscript. The TorchScript
exporter (dynamo=False) is deprecated (it warns so) and cannot even trace this model with a
dynamic batch. The batch is fixed at export (the benchmark's --batch), so ONNX Runtime sees
static shapes throughout; the export takes a few seconds of fixed cost (tracing, onnxscript's
op table), which is not timed.

measure.OnnxBench runs the export in a child process (this file as a script), so that the
process it times holds ONNX Runtime and its session only: its max RSS is ORT's own, without
PyTorch, the PyTorch model or the exporter's working memory, and no PyTorch thread pool runs
beside ORT's. The child also saves the reference's logits on the benchmark's input batch, and
the bench checks ORT's against them before timing.

    python benchmarks/onnx_ref.py --config-json '{"image_size": 16, ...}' --batch 8 --out DIR
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

import measure  # benchmarks/ is not a package; measure also puts tests/ on the path
from minivit import ViTConfig

REQUIRES = ("onnxruntime", "onnx", "onnxscript", "torch")   # ORT runs; the rest export
INSTALL = "pip install -e '.[onnx]'"
EXPORTER = "torch.onnx.export(dynamo=True)"
MODEL_FILE, LOGITS_FILE, INFO_FILE = "model.onnx", "torch_logits.npy", "export.json"
INPUT, OUTPUT = "images", "logits"
REL_TOL = 1e-4          # max |ORT - torch| / max |torch| accepted on the logits (float32)
EXIT_MISSING = 3        # the export child's exit status when a package cannot be imported


class Unavailable(Exception):
    """The ONNX implementation cannot run on this machine; the message says why and the fix."""


def missing() -> list:
    """The packages of REQUIRES that are not installed (found by name, nothing imported)."""
    return [m for m in REQUIRES if importlib.util.find_spec(m) is None]


def build_reference(cfg: ViTConfig, sdpa: bool = False):
    """The PyTorch reference exactly as measure.TorchBench builds it (seed 0, float32), in eval
    mode: the same weights for the same config."""
    import torch
    from torch_vit import TorchViT
    torch.manual_seed(0)
    return TorchViT(cfg, dtype=torch.float32, sdpa=sdpa).eval()


def export(model, x, path: str) -> dict:
    """Export `model` for input x (B, C, S, S), batch fixed, to path (weights in path + '.data'
    beside it); returns {"opset", "export_s"}."""
    import onnx
    import torch
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's own use of a deprecated pytree class; nothing to act on here
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=[INPUT],
                          output_names=[OUTPUT], verbose=False)
    opset = max(o.version for o in onnx.load(path, load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))
    return {"opset": opset, "export_s": time.perf_counter() - t0}


def export_reference(cfg: ViTConfig, batch: int, out_dir: str, sdpa: bool = False,
                     threads: int | None = None) -> dict:
    """Build the reference, export it for `batch` images to out_dir/model.onnx, and save its
    logits on the benchmark's input batch (measure.host_batch) to out_dir/torch_logits.npy.
    Returns (and writes to out_dir/export.json) what the export was: parameters, opset,
    exporter, seconds."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    model = build_reference(cfg, sdpa)
    x = torch.from_numpy(measure.host_batch(cfg, batch)[0])                 # (B, C, S, S)
    info = export(model, x, os.path.join(out_dir, MODEL_FILE))
    with torch.no_grad():
        np.save(os.path.join(out_dir, LOGITS_FILE), model(x).numpy())      # (B, K)
    info.update(params=model.num_params(), exporter=f"torch {torch.__version__} {EXPORTER}")
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        json.dump(info, f)
    return info


def export_in_subprocess(cfg: ViTConfig, batch: int, out_dir: str, sdpa: bool = False,
                         threads: int | None = None) -> dict:
    """export_reference in a fresh Python process (see the module docstring for why); its
    output is kept and shown only when it fails. Raises Unavailable when the child cannot
    import what the export needs."""
    cmd = [sys.executable, os.path.abspath(__file__), "--config-json", json.dumps(cfg.to_dict()),
           "--batch", str(batch), "--out", out_dir] + ["--sdpa"] * sdpa
    if threads:
        cmd += ["--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == EXIT_MISSING:
        raise Unavailable(r.stderr.strip().splitlines()[-1])
    if r.returncode:
        raise SystemExit(f"exporting the PyTorch reference to ONNX failed (exit {r.returncode}):"
                         f"\n{r.stderr[-3000:]}")
    with open(os.path.join(out_dir, INFO_FILE)) as f:
        return json.load(f)


def session_options(threads: int):
    """ONNX Runtime session options: every graph optimization, `threads` intra-op threads (the
    calling thread included) and no inter-op parallelism, as the other implementations run."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def make_session(model, threads: int):
    """An InferenceSession on the CPU for `model` (a path, or the serialized bytes)."""
    import onnxruntime as ort
    return ort.InferenceSession(model, session_options(threads),
                                providers=["CPUExecutionProvider"])


def matmul_model(n: int) -> bytes:
    """A one-node ONNX graph c = a @ b of n x n float32 matrices: ORT's own GEMM (MLAS), for
    the matmul peak."""
    from onnx import TensorProto, helper
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              io[:2], io[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Export the PyTorch reference ViT to ONNX (the "
                                             "benchmark's onnx implementation runs this)")
    ap.add_argument("--config-json", required=True, help="ViTConfig.to_dict() as JSON")
    ap.add_argument("--batch", type=int, required=True, help="images per batch (fixed)")
    ap.add_argument("--out", required=True, help="folder for model.onnx and the reference logits")
    ap.add_argument("--sdpa", action="store_true", help="the reference with sdpa=True")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    for name in ("torch", "onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"the ONNX export cannot import {name} ({e}): {INSTALL}", file=sys.stderr)
            raise SystemExit(EXIT_MISSING)
    cfg = ViTConfig.from_dict(json.loads(args.config_json))
    export_reference(cfg, args.batch, args.out, args.sdpa, args.threads)


if __name__ == "__main__":
    main()
