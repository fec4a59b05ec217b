"""benchmarks/: the smoke run works end to end and reports sane numbers, vit_flops matches hand
and published counts, --impl all alternates fresh processes, and the per-layer breakdown calls the
package's pairs with the right shapes. Never asserts a time or a speed.

Below them: results as data (the stamped records, streamed as measured, a failed process not
losing the others' records, the table generated from them) and the GPU run's dry run on the CPU.
Nothing here writes into the repository: records go to temporary files or standard output."""
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, has, needs_torch, relerr
from minivit import ViT, ViTConfig

# benchmarks/ is a folder of scripts, not a package: its modules import each other by name
BENCH_DIR = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH_DIR)
import bench  # noqa: E402
import gpu_run  # noqa: E402
import layers  # noqa: E402
import matmuls  # noqa: E402
import measure  # noqa: E402
import onnx_ref  # noqa: E402
import stamp  # noqa: E402
import table  # noqa: E402

needs_onnx = pytest.mark.skipif(not all(has(m) for m in onnx_ref.REQUIRES),
                                reason=f"needs {', '.join(onnx_ref.REQUIRES)} ({onnx_ref.INSTALL})")

needs_transformers = pytest.mark.skipif(
    bool(bench.transformers_missing()),
    reason=f"needs {', '.join(bench.TRANSFORMERS_REQUIRES)} ({bench.TRANSFORMERS_INSTALL})")

SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5)


def run_bench(*argv, env=None, rc=0):
    """Run bench.py in a fresh process; return (stdout, stderr) after checking its exit status."""
    r = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "bench.py"), *argv],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == rc, f"bench.py {' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout, r.stderr


def json_records(stdout: str) -> list:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), f"not JSON lines:\n{stdout}"
    return [json.loads(line) for line in lines]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def num_params(cfg: ViTConfig) -> int:
    return sum(math.prod(s) for s in cfg.param_shapes().values())


def relay(emit, records: list) -> list:
    """What run_child does with a child's records: each to emit() as it arrives."""
    for r in records:
        (emit or (lambda r: None))(r)
    return records


# ---- vit_flops and the configs -----------------------------------------------------------------
def test_vit_flops_hand_count():
    # Per image: P=4 patches, N=5 tokens, D=8, F=12, p*p*C=32, K=3.
    #   patch embed 2*4*32*8 = 2048
    #   block: qkv 2*5*8*24 = 1920, q k^T 2*5*5*8 = 400, a v 400, proj 2*5*8*8 = 640,
    #          fc1 2*5*8*12 = 960, fc2 960 -> 5280; two blocks 10560
    #   head 2*8*3 = 48                     -> 12656 per image
    assert measure.vit_flops(ViTConfig(**SMALL), 3) == 3 * 12656
    # pre-logits R=5: + 2*8*5 = 80, and the head reads R: 2*5*3 = 30 instead of 48
    assert measure.vit_flops(ViTConfig(**SMALL, representation_size=5), 3) == 3 * (12656 + 80 - 48 + 30)
    # heads only regroup the same products
    assert measure.vit_flops(ViTConfig(**{**SMALL, "heads": 4}), 3) == 3 * 12656


def test_matmuls_lists_the_products_vit_flops_counts():
    """benchmarks/matmuls.py's products of a forward: the hand count's shapes (SMALL, above),
    and for every config the FLOPs measure.vit_flops counts, so the products it times are the
    ones bench.py's GFLOP/s divide by."""
    found = matmuls.products(ViTConfig(**SMALL), 3)
    assert found[("patch_embed.w", 1, 3 * 4, 32, 8)] == 1
    assert found[("attn.qkv.w", 1, 3 * 5, 8, 24)] == 2        # one per block
    assert found[("attention q k^T", 3 * 2, 5, 4, 5)] == 2     # (B H) x (N, Dh) @ (Dh, N)
    assert found[("attention a v", 3 * 2, 5, 5, 4)] == 2
    assert matmuls.flops(found) == measure.vit_flops(ViTConfig(**SMALL), 3) == 3 * 12656
    for name in bench.CONFIGS:
        cfg = bench.bench_config(name)
        assert matmuls.flops(matmuls.products(cfg, 2)) == measure.vit_flops(cfg, 2), name


@pytest.mark.parametrize("lib", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_matmuls_runs(lib):
    """The script end to end on the tiny config, in its own process (it sets the BLAS threads
    before NumPy loads): every product's line and the total; a bad flag is refused."""
    run = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "matmuls.py"), "--config",
                          "tiny", "--batch", "2", "--reps", "1", "--threads", "1", "--lib", lib],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "in " + lib in lines[0] and lines[-1].startswith("forward's products: ")
    assert sum(line.startswith("attention ") for line in lines) == 2
    bad = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "matmuls.py"), "--config",
                          "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--config nope: not one of" in bad.stderr


@pytest.mark.parametrize("name,gmacs,params", [("vit-b16", 17.6, 86_567_656),
                                               ("vit-s16", 4.6, 22_050_664)])
def test_configs_match_published(name, gmacs, params):
    """Multiply-adds per 224 x 224 image (DeiT paper, Table 1: ViT-B 17.6 G, DeiT-S 4.6 G) and
    the parameter counts of timm's vit_base_patch16_224 / vit_small_patch16_224."""
    cfg = bench.bench_config(name)
    f = measure.vit_flops(cfg, 1)
    assert abs(f / 2 - gmacs * 1e9) / (gmacs * 1e9) < 0.01, f
    assert num_params(cfg) == params


def test_configs_are_the_named_models():
    """Every --config is minivit.config's named model of that name (with the fields CONFIGS
    overrides): the shapes the benchmark's records were measured with, field by field."""
    before = {   # bench.py's own table before it read the registry
        "mnist": dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64,
                      depth=6, heads=4, mlp_ratio=2.0),
        "vit-b16": dict(image_size=224, patch_size=16, in_channels=3, num_classes=1000,
                        dim=768, depth=12, heads=12, mlp_ratio=4.0),
        "dinov2-s14": dict(image_size=224, patch_size=14, in_channels=3, num_classes=1000,
                           dim=384, depth=12, heads=6, mlp_ratio=4.0),
        "tiny": dict(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32,
                     depth=2, heads=2, mlp_ratio=2.0),
    }
    for name, fields in before.items():
        assert bench.bench_config(name).to_dict() == ViTConfig(**fields).to_dict(), name
    assert set(bench.CONFIGS) >= set(before)


def test_image_size_builds_the_model_at_that_size():
    cfg = bench.bench_config("vit-b16", 448)
    assert (cfg.image_size, cfg.num_tokens) == (448, 785)
    assert cfg.param_shapes()["pos_embed"] == (1, 785, 768)
    assert bench.config_label("vit-b16", 448) == "vit-b16@448"
    assert bench.config_label("vit-b16", 224) == bench.config_label("vit-b16", None) == "vit-b16"
    with pytest.raises(SystemExit, match="image-size 100"):
        bench.bench_config("vit-b16", 100)                 # 16 does not divide 100
    args = bench.parse_args(["--config", "tiny", "--image-size", "24", "--impl", "minivit,torch"])
    cmd = bench.child_command(args, "minivit", "infer")
    assert cmd[cmd.index("--image-size") + 1] == "24" and args.label == "tiny@24"


def test_smoke_at_another_image_size():
    recs = json_records(run_bench("--smoke", "--what", "infer", "--image-size", "24",
                                  "--results", "-")[0])
    infer = [r for r in recs if r["what"] == "infer"][0]
    assert infer["config"] == "tiny@24" and infer["image_size"] == 24
    assert positive(infer["ms"])


def test_dinov2_s14_shape():
    cfg = bench.bench_config("dinov2-s14")
    assert (cfg.grid, cfg.num_tokens, cfg.dim, cfg.heads, cfg.mlp_dim) == (16, 257, 384, 6, 1536)
    assert num_params(cfg) == 22_050_664 + (257 - 197) * 384 - (16 * 16 * 3 - 14 * 14 * 3) * 384


# ---- the per-layer breakdown -------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, dict(pool="mean", representation_size=5, gelu="erf")])
def test_step_layers_run_the_package_pairs(extra):
    """Every row's forward and backward run on a piece of 3 images; the backward gives dx of the
    input's shape, and the parameter grads have the shapes of the model's own parameters."""
    model = ViT(ViTConfig(**SMALL, **extra), seed=0)
    shapes = {tuple(v.shape) for v in model.params.values()}
    rows = layers.step_layers(model)
    assert [r.calls for r in rows] == [1, 4, 2, 2, 2, 2, 2, 2, 1, 1]
    assert [r.part_of for r in rows if r.part_of] == ["attention core", "mlp (+norm2 affine)"]
    for row in rows:
        inputs = row.inputs(3)
        out, cache = row.forward(*inputs)
        dout = np.ones_like(out) if hasattr(out, "shape") else None
        grads = row.backward(dout, cache)
        if isinstance(grads, tuple) and isinstance(grads[1], dict):   # head: (dx, {name: grad})
            dx, g = grads
            assert all(g[k].shape == model.params[k].shape for k in g), row.name
            grads = (dx,)
        elif not isinstance(grads, tuple):
            grads = (grads,)
        assert grads[0].shape == inputs[0].shape, row.name
        assert all(tuple(g.shape) in shapes for g in grads[1:]), row.name


def test_batch_pieces_follow_the_model_split():
    mnist, b16 = (bench.bench_config(k) for k in ("mnist", "vit-b16"))
    assert sum(measure.batch_pieces(128, mnist)) == 128
    assert measure.batch_pieces(8, mnist) == [8]           # below two pieces of MIN_PIECE
    assert measure.batch_pieces(8, b16) == [4, 4]          # ViT-B/16: 4 x 197 rows each


# ---- the command line --------------------------------------------------------------------------
def test_smoke_json_has_every_part():
    recs = json_records(run_bench("--smoke", "--results", "-")[0])
    by = {}
    for r in recs:
        by.setdefault(r["what"], []).append(r)
    assert set(by) >= {"meta", "peak", "train", "infer", "layers", "layers_total"}, sorted(by)
    meta = by["meta"][0]
    assert meta["impl"] == "minivit"
    assert meta["params"] == num_params(bench.bench_config("tiny"))
    assert positive(by["peak"][0]["gflops"])
    for what in ("train", "infer"):
        r = by[what][0]
        for k in ("ms", "images_per_s", "gflops", "gflop_per_step", "peak_rss_mb"):
            assert positive(r[k]), (what, k, r)
        assert r["steps"] == 3 and r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert r["images_per_s"] == pytest.approx(32 / r["ms"] * 1e3)
    assert by["train"][0]["gflop_per_step"] == pytest.approx(3 * by["infer"][0]["gflop_per_step"])
    rows = by["layers"]
    names = [r["layer"] for r in rows]
    for want in ("patch embed", "layernorm", "qkv", "attention core", "proj", "mlp", "head",
                 "loss", "AdamW"):
        assert any(want in n for n in names), (want, names)
    assert sum(r["share"] for r in rows if r["part_of"] is None) == pytest.approx(1.0)
    parts = {r["part_of"]: r for r in rows if r["part_of"]}
    assert set(parts) == {"attention core", "mlp (+norm2 affine)"}
    for r in rows:
        assert positive(r["ms"]) and r["calls"] >= 1
        if r["fwd_ms"] is not None:
            assert positive(r["fwd_ms"]) and positive(r["bwd_ms"])
            assert r["ms"] == pytest.approx(r["fwd_ms"] + r["bwd_ms"])
    total = by["layers_total"][0]
    assert positive(total["sum_ms"]) and positive(total["train_step_ms"])
    assert sum(total["chunks"]) == 32 and meta["batch_pieces"] == len(total["chunks"])


def test_smoke_table():
    out, _ = run_bench("--smoke", "--what", "infer,layers")
    assert "img/s" in out and "GFLOP/s" in out and "per-layer breakdown" in out
    assert "infer  minivit" in out and "measured train step" in out


def test_runs_without_torch(tmp_path):
    """A torch that cannot be imported: minivit is measured, torch reported as skipped."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    out, err = run_bench("--smoke", "--impl", "all", "--what", "infer", env=env)
    assert "torch not installed; skipped" in out + err
    assert "infer  minivit" in out and "minivit/torch" not in out


def test_bad_what_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown.*train, infer"):
        bench.main(["--smoke", "--what", "speed"])


def test_impl_all_alternates_and_aggregates(monkeypatch):
    """--impl all: one process per measurement, minivit and torch alternating each round, then
    medians per implementation and the throughput ratio (children faked: no timing here)."""
    calls = []

    def fake_child(cmd, threads, procs=1, emit=None):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        assert cmd[cmd.index("--results") + 1] == "-" and threads == 2 and procs == 1
        calls.append((impl, what))
        ms = {"minivit": 10.0, "torch": 20.0}[impl] + len(calls)
        if what == "peak":
            return relay(emit, [{"what": "peak", "impl": impl, "gflops": 100.0}])
        return relay(emit, [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0,
                             "peak_rss_mb": 50.0, "other_cores": 0.0}])

    monkeypatch.setattr(bench, "run_child", fake_child)
    monkeypatch.setattr(bench, "installed_impls", lambda: ["minivit", "torch"])
    args = bench.parse_args(["--smoke", "--impl", "all", "--rounds", "2"])
    recs = bench.run_all(args, ["peak", "train"], lambda r: None)
    assert calls == [("minivit", "peak"), ("torch", "peak"), ("minivit", "train"),
                     ("torch", "train"), ("minivit", "train"), ("torch", "train")]
    assert [(r["impl"], r["round"]) for r in recs if r["what"] == "train" and "round" in r] == \
        [("minivit", 0), ("torch", 0), ("minivit", 1), ("torch", 1)]
    agg = {r["impl"]: r for r in recs if r["what"] == "train" and r.get("aggregate")}
    assert agg["minivit"]["ms_rounds"] == [13.0, 15.0] and agg["minivit"]["ms"] == 14.0
    assert agg["torch"]["ms"] == 25.0 and agg["torch"]["frac_peak"] == pytest.approx(
        agg["torch"]["gflops"] / 100.0)
    ratio = [r for r in recs if r["what"] == "ratio"]
    assert len(ratio) == 1 and ratio[0]["minivit_over_torch"] == pytest.approx(25.0 / 14.0)


def test_impl_all_runs_torch_sdpa_beside_torch(monkeypatch):
    """torch-sdpa (the reference with PyTorch's fused attention) alternates with the others for
    train and infer and gets its own ratio; its matmul peak is torch's, so it starts no peak
    process (one "skipped" record says so)."""
    calls = []

    def fake_child(cmd, threads, procs=1, emit=None):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        calls.append((impl, what))
        if what == "peak":
            return relay(emit, [{"what": "peak", "impl": impl, "gflops": 100.0}])
        ms = {"minivit": 10.0, "torch": 20.0, "torch-sdpa": 15.0}[impl]
        return relay(emit, [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0}])

    monkeypatch.setattr(bench, "run_child", fake_child)
    monkeypatch.setattr(bench, "installed_impls", lambda: ["minivit", "torch", "torch-sdpa"])
    args = bench.parse_args(["--smoke", "--impl", "all", "--rounds", "1"])
    recs = bench.run_all(args, ["peak", "infer"], lambda r: None)
    assert calls == [("minivit", "peak"), ("torch", "peak"), ("minivit", "infer"),
                     ("torch", "infer"), ("torch-sdpa", "infer")]
    skipped = [r for r in recs if r["what"] == "skipped"]
    assert [(r["impl"], r["of"]) for r in skipped] == [("torch-sdpa", "peak")]
    ratio = [r for r in recs if r["what"] == "ratio"][0]
    assert ratio["minivit_over_torch"] == 2.0 and ratio["minivit_over_torch-sdpa"] == 1.5


@needs_torch
def test_impl_all_measures_torch():
    """The real thing, once: minivit and the PyTorch reference each in a fresh process."""
    recs = json_records(run_bench("--smoke", "--impl", "all", "--what", "train", "--steps", "1",
                                  "--warmup", "0", "--results", "-")[0])
    meta = {r["impl"]: r for r in recs if r["what"] == "meta"}
    assert meta["torch"]["params"] == meta["minivit"]["params"] == meta["torch-sdpa"]["params"]
    assert meta["torch"]["sdpa"] is False and meta["torch-sdpa"]["sdpa"] is True
    agg = {r["impl"]: r for r in recs if r["what"] == "train" and r.get("aggregate")}
    hf = set() if bench.transformers_missing() else {"transformers"}
    assert set(agg) == {"minivit", "torch", "torch-sdpa"} | hf
    if hf:
        assert meta["transformers"]["params"] == meta["minivit"]["params"]
    assert all(positive(r["ms"]) for r in agg.values())
    ratio = [r for r in recs if r["what"] == "ratio"]
    assert len(ratio) == 1 and positive(ratio[0]["minivit_over_torch"])
    assert positive(ratio[0]["minivit_over_torch-sdpa"])


# ---- transformers -----------------------------------------------------------------------------
@needs_transformers
def test_impl_transformers_end_to_end():
    """bench.py --impl transformers on the smoke model: minivit's model written with
    save_pretrained, loaded by transformers' ViTForImageClassification, its logits checked
    against minivit's, then a training step and inference timed; its peak is torch's. In this
    process, as one measurement process runs (transformers' import alone takes seconds); the
    child-process path runs in test_impl_all_measures_torch."""
    recs = bench.main(["--smoke", "--impl", "transformers", "--what", "peak,train,infer",
                       "--batch", "4", "--steps", "1", "--warmup", "0", "--results", "-"])
    by = {r["what"]: r for r in recs}
    assert set(by) == {"meta", "skipped", "train", "infer"}
    meta = by["meta"]
    assert meta["impl"] == "transformers" and meta["hf_class"] == "ViTForImageClassification"
    assert meta["hf_attn"] == "sdpa" and meta["transformers"]
    assert meta["params"] == num_params(bench.bench_config("tiny"))
    assert meta["hf_rel_err"] < measure.TransformersBench.REL_TOL
    assert by["skipped"]["of"] == "peak" and "same matmul as torch" in by["skipped"]["reason"]
    for what in ("train", "infer"):
        for k in ("ms", "images_per_s", "gflops", "peak_rss_mb"):
            assert positive(by[what][k]), (what, k)


@needs_transformers
def test_transformers_headless_dinov2_and_the_parity_check(monkeypatch):
    """A headless DINOv2 backbone is written as config.json's dinov2 and loaded as Dinov2Model
    (its pooler_output checked against minivit's features), trained through a linear head; a
    model that computes something else fails before any timing."""
    from minivit.config import model_config
    cfg = model_config("dinov2-s14", image_size=28, patch_size=14, dim=16, depth=1, heads=2)
    b = measure.TransformersBench(cfg, 2)
    info = b.info()
    assert info["hf_class"] == "Dinov2Model" and info["params"] == num_params(cfg)
    assert info["hf_rel_err"] < b.REL_TOL and "pooler_output" in info["hf_head"]
    r = measure.time_step(b, "train", 2, 1, 0)
    assert positive(r["ms"]) and r["steps"] == 1
    monkeypatch.setattr(measure.TransformersBench, "REL_TOL", -1.0)
    with pytest.raises(SystemExit, match="differ from minivit's"):
        measure.TransformersBench(cfg, 2)


def test_transformers_missing_is_skipped_with_the_fix(monkeypatch):
    """--impl transformers without its packages: a "skipped" record that names them; --impl all
    leaves it out."""
    monkeypatch.setattr(bench, "transformers_missing", lambda: ["transformers"])
    recs = bench.main(["--config", "tiny", "--impl", "transformers", "--what", "infer",
                       "--results", "-"])
    assert [r["what"] for r in recs] == ["skipped"]
    if not has("torch"):                                  # torch is looked for first
        assert "torch not installed" in recs[0]["reason"]
        return
    assert "transformers not installed" in recs[0]["reason"]
    assert bench.TRANSFORMERS_INSTALL in recs[0]["reason"]
    assert "transformers" not in bench.installed_impls()


# ---- ONNX Runtime ------------------------------------------------------------------------------
def test_impl_all_skips_onnx_training(monkeypatch):
    """With onnx installed, --impl all alternates three implementations for inference; for the
    training step onnx starts no process and leaves one "skipped" record with its reason, and
    the ratios name each implementation measured (children faked: no timing here)."""
    calls = []

    def fake_child(cmd, threads, procs=1, emit=None):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        calls.append((impl, what))
        ms = {"minivit": 10.0, "torch": 20.0, "onnx": 5.0}[impl]
        return relay(emit, [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0,
                             "peak_rss_mb": 50.0}])

    monkeypatch.setattr(bench, "run_child", fake_child)
    monkeypatch.setattr(bench, "installed_impls", lambda: ["minivit", "torch", "onnx"])
    args = bench.parse_args(["--smoke", "--impl", "all", "--rounds", "2"])
    recs = bench.run_all(args, ["train", "infer"], lambda r: None)
    assert calls == [("minivit", "train"), ("torch", "train")] * 2 + \
        [("minivit", "infer"), ("torch", "infer"), ("onnx", "infer")] * 2
    skipped = [r for r in recs if r["what"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["impl"] == "onnx" and skipped[0]["of"] == "train"
    assert "inference only" in skipped[0]["reason"]
    ratio = {r["of"]: r for r in recs if r["what"] == "ratio"}
    assert set(ratio["train"]) == {"what", "of", "aggregate", "minivit_over_torch", "config",
                                   "batch", "device", "threads"}
    assert ratio["infer"]["minivit_over_torch"] == pytest.approx(2.0)
    assert ratio["infer"]["minivit_over_onnx"] == pytest.approx(0.5)


def test_onnx_missing_is_skipped_with_the_fix(monkeypatch, capsys):
    """--impl onnx without its packages: a "skipped" record that names the extra, no error."""
    monkeypatch.setattr(onnx_ref, "missing", lambda: ["onnxruntime", "onnxscript"])
    recs = bench.main(["--config", "tiny", "--impl", "onnx", "--what", "infer", "--results", "-"])
    assert [r["what"] for r in recs] == ["skipped"]
    assert "onnxruntime, onnxscript not installed" in recs[0]["reason"]
    assert onnx_ref.INSTALL in recs[0]["reason"]


@needs_onnx
def test_onnx_export_matches_torch(tmp_path):
    """The exported reference, run by ONNX Runtime with every graph optimization, gives the
    logits of TorchBench's model (same seed, same weights) on the benchmark's input batch."""
    import torch
    cfg = bench.bench_config("tiny")
    info = onnx_ref.export_reference(cfg, 4, str(tmp_path))
    ref = measure.TorchBench(cfg, 4, num_threads=2)                 # built as the torch child
    ref.model.eval()
    with torch.no_grad():
        want = ref.model(ref.x).numpy()                              # (4, K)
    session = onnx_ref.make_session(str(tmp_path / onnx_ref.MODEL_FILE), threads=2)
    got = session.run(None, {onnx_ref.INPUT: ref.x.numpy()})[0]
    assert got.shape == (4, cfg.num_classes) and got.dtype == np.float32
    assert relerr(got, want) < onnx_ref.REL_TOL
    assert np.array_equal(np.load(tmp_path / onnx_ref.LOGITS_FILE), want)
    assert info["params"] == ref.model.num_params() == num_params(cfg)
    assert session.get_providers() == ["CPUExecutionProvider"]


@needs_onnx
def test_impl_onnx_end_to_end():
    """bench.py --impl onnx, once for real: the export in its child, the logits check, inference
    timed; the training step is a "skipped" record, not an error."""
    recs = json_records(run_bench("--config", "tiny", "--impl", "onnx", "--what", "train,infer",
                                  "--batch", "8", "--steps", "2", "--warmup", "0",
                                  "--wait-quiet", "0", "--results", "-")[0])
    by = {r["what"]: r for r in recs}
    assert set(by) == {"meta", "skipped", "infer"}
    meta = by["meta"]
    assert meta["impl"] == "onnx" and meta["params"] == num_params(bench.bench_config("tiny"))
    assert meta["onnx_rel_err"] < onnx_ref.REL_TOL and meta["ort_threads"] == 2
    assert meta["providers"] == ["CPUExecutionProvider"]
    assert by["skipped"]["of"] == "train" and "inference only" in by["skipped"]["reason"]
    for k in ("ms", "images_per_s", "gflops", "peak_rss_mb"):
        assert positive(by["infer"][k]), k
    assert by["infer"]["steps"] == 2


# ---- results as data: stamped records, streamed ------------------------------------------------
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def read_records(path) -> list:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def assert_stamped(r: dict, script: str = "bench.py") -> None:
    assert r["schema"] == stamp.SCHEMA and TIME.match(r["time"]), r.get("time")
    assert r["run"] and r["script"] == script
    assert r["command"].startswith(f"python benchmarks/{script}"), r["command"]
    assert set(r["git"]) >= {"commit", "dirty"}
    assert r["git"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", r["git"]["commit"])
    m = r["machine"]
    assert m["cpu"] and m["cores"] >= 1 and isinstance(m["blas"], dict) and "gpu" in m
    assert m["tag"] == stamp.machine_tag(m["cpu"], m["cores"], [m["gpu"]] if m["gpu"] else [],
                                         m["isa"])
    assert {"python", "numpy", "minivit"} <= set(r["versions"])


def test_json_appends_stamped_records_and_keeps_the_table(tmp_path):
    """--results FILE: every record stamped (machine, versions, commit, date, command) and the
    measurement itself; the console table is still printed; the file is appended to."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"earlier": "record"}\n')
    out, _ = run_bench("--smoke", "--what", "peak,train,infer", "--steps", "2",
                       "--results", str(path))
    assert "img/s" in out and "train  minivit" in out and "records appended to" in out
    recs = read_records(path)
    assert recs[0] == {"earlier": "record"}                     # appended, not overwritten
    by = {r["what"]: r for r in recs[1:]}
    assert set(by) == {"meta", "peak", "train", "infer"}
    assert len({r["run"] for r in recs[1:]}) == 1
    for r in recs[1:]:
        assert_stamped(r)
        assert "--smoke" in r["command"] and str(path) in r["command"]
    for what in ("train", "infer"):
        r = by[what]
        assert (r["config"], r["batch"], r["impl"], r["device"]) == ("tiny", 32, "minivit", "cpu")
        assert r["steps"] == 2 and len(r["ms_all"]) == 2 and r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert positive(r["images_per_s"]) and positive(r["peak_rss_mb"])
        assert r["setup"]["params"] == by["meta"]["params"] and r["setup"]["backend"] == "numpy"
        assert 0 < r["frac_peak"]                          # the peak came first, same process
    assert by["peak"]["n"] == 256 and positive(by["peak"]["gflops"])


def test_machine_tag_and_default_path():
    assert stamp.machine_tag("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", 16,
                             ["NVIDIA H100 80GB HBM3"], "avx512") == \
        "intel-xeon-platinum-8480-avx512-16c-nvidia-h100-80gb-hbm3"
    assert stamp.machine_tag("AMD EPYC", 2, []) == "amd-epyc-2c"
    assert stamp.isa(["avx", "avx2", "avx512f", "fma"]) == "avx512" and stamp.isa(["avx2"]) == "avx2"
    path = stamp.default_path()
    assert os.path.dirname(path) == os.path.join(BENCH_DIR, "results")
    assert re.fullmatch(r"[a-z0-9-]+\.jsonl", os.path.basename(path))


def test_commit_from_the_environment_without_git(tmp_path, monkeypatch):
    """A copy of the working tree without .git (the GPU machine's): $MINIVIT_COMMIT says which."""
    monkeypatch.setattr(stamp, "ROOT", str(tmp_path))
    monkeypatch.setattr(stamp, "_GIT_CACHE", [])
    monkeypatch.setenv(stamp.COMMIT_VAR, "0123abcd+dirty")
    assert stamp.git_state() == {"commit": "0123abcd", "dirty": True, "from": stamp.COMMIT_VAR}
    monkeypatch.setattr(stamp, "_GIT_CACHE", [])
    monkeypatch.delenv(stamp.COMMIT_VAR)
    assert stamp.git_state() == {"commit": None, "dirty": None}


def test_command_line_has_no_machine_paths():
    line = stamp.command_line([os.path.join(BENCH_DIR, "bench.py"), "--config", "mnist", "a b"])
    assert line == "python benchmarks/bench.py --config mnist 'a b'"


def test_a_crash_keeps_the_records_measured_before_it(tmp_path, monkeypatch):
    """Records are written as they are measured: a measurement that raises loses only itself."""
    path = tmp_path / "r.jsonl"

    def broken(*a, **k):
        raise RuntimeError("the step broke")
    monkeypatch.setattr(measure, "time_step", broken)
    with pytest.raises(RuntimeError, match="the step broke"):
        bench.main(["--smoke", "--what", "peak,train", "--results", str(path)])
    recs = read_records(path)
    assert [r["what"] for r in recs] == ["meta", "peak"]
    assert positive(recs[1]["gflops"]) and all(r["time"] for r in recs)


def test_a_failed_process_loses_nothing_else(tmp_path):
    """Several implementations: the torch processes fail (a torch that raises on import); each
    leaves a "failed" record with its exit status and error, minivit's rounds and their median
    are kept, the table still prints, and the exit status says something failed."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise RuntimeError('broken torch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    path = tmp_path / "r.jsonl"
    out, err = run_bench("--smoke", "--impl", "minivit,torch", "--what", "infer", "--rounds", "2",
                         "--steps", "1", "--warmup", "0", "--results", str(path), env=env, rc=1)
    assert "torch infer: FAILED" in out and "broken torch" in err
    recs = read_records(path)
    rounds = [(r["what"], r["impl"], r.get("round")) for r in recs if not r.get("aggregate")
              and r["what"] in ("infer", "failed")]
    assert rounds == [("infer", "minivit", 0), ("failed", "torch", 0), ("infer", "minivit", 1),
                      ("failed", "torch", 1)]
    failed = [r for r in recs if r["what"] == "failed"]
    assert all(r["exit"] != 0 and "broken torch" in r["error"] and r["of"] == "infer"
               for r in failed)
    agg = [r for r in recs if r.get("aggregate")]
    assert [(r["what"], r["impl"], r["rounds"]) for r in agg] == [("infer", "minivit", 2)]
    for r in recs:
        assert_stamped(r)
        assert r["command"].startswith("python benchmarks/bench.py --smoke --impl minivit,torch")
    assert all(r["child_command"].startswith("python benchmarks/bench.py --impl ")
               for r in recs if not r.get("aggregate"))


@pytest.mark.skipif(not has("mpi4py"), reason="needs mpi4py (pip install -e .[mpi])")
def test_allreduce_records(tmp_path):
    from minivit.parallel import launch
    if launch.mpiexec_path() is None:
        pytest.skip("needs mpiexec (pip install -e .[mpi])")
    path = tmp_path / "r.jsonl"
    r = subprocess.run([launch.mpiexec_path(), "-n", "2", sys.executable,
                        os.path.join(BENCH_DIR, "allreduce.py"), "--sizes", "1", "1000",
                        "--reps", "2", "--results", str(path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = read_records(path)
    assert [(x["what"], x["numbers"], x["bytes"], x["processes"]) for x in recs] == \
        [("allreduce", 1, 4, 2), ("allreduce", 1000, 4000, 2)]
    for x in recs:
        assert x["schema"] == stamp.SCHEMA and x["script"] == "allreduce.py"
        assert x["command"].startswith("mpiexec -n 2 python benchmarks/allreduce.py")
        assert positive(x["ms"]) and "mpi4py" in x["versions"]


def test_pretrained_aggregate_and_ratio():
    import pretrained
    rounds = [{"what": "infer", "impl": i, "ms": ms, "steps": 3, "peak_rss_mb": 10.0,
               "versions": {"numpy": "1"} if i == "minivit" else {"torch": "2"}}
              for i, ms in (("minivit", 10.0), ("transformers", 20.0), ("minivit", 12.0),
                            ("transformers", 22.0))]
    rounds.append({"what": "failed", "impl": "transformers", "of": "infer"})
    agg = pretrained.aggregate(rounds, 8, 2)
    assert [(r["what"], r.get("impl"), r.get("ms")) for r in agg] == \
        [("infer", "minivit", 11.0), ("infer", "transformers", 21.0), ("ratio", None, None)]
    assert agg[2]["minivit_over_transformers"] == pytest.approx(21.0 / 11.0)
    assert agg[0]["config"] == agg[2]["config"] == "vit-b16-hf"


# ---- the generated table -----------------------------------------------------------------------
def record(what, impl, time, ms=10.0, run="r1", tag="amd-epyc-2c", config="mnist", **kw):
    """A stamped record as bench.py writes it (only the fields the table reads)."""
    r = {"schema": 1, "what": what, "impl": impl, "config": config, "batch": 128,
         "device": "cpu", "threads": 2, "ms": ms, "images_per_s": 128 / ms * 1e3,
         "gflops": 50.0, "peak_rss_mb": 90.0, "steps": 30, "time": time, "run": run,
         "git": {"commit": "abcdef0123" * 4, "dirty": False},
         "machine": {"tag": tag, "cpu": "AMD EPYC", "cores": 2,
                     "blas": {"name": "scipy-openblas", "version": "0.3.31", "kernel": "Haswell"},
                     "gpu": None},
         "versions": {"numpy": "2.4.6", "torch": "2.13.0"}, "setup": {"procs": 1, "tf32": False}}
    r.update(kw)
    return r


def write_records(path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def table_records() -> list:
    return [
        record("train", "minivit", "2026-01-01T00:00:00Z", ms=40.0, run="old"),
        record("train", "minivit", "2026-01-02T00:00:00Z", ms=30.0, run="new", aggregate=True,
               rounds=3),
        record("train", "torch", "2026-01-02T00:00:01Z", ms=45.0, run="new", aggregate=True,
               rounds=3),
        {"what": "ratio", "of": "train", "config": "mnist", "batch": 128, "device": "cpu",
         "threads": 2, "run": "new", "time": "2026-01-02T00:00:02Z", "minivit_over_torch": 1.5},
        record("infer", "minivit", "2026-01-03T00:00:00Z", ms=12.0, run="solo"),
        record("train", "minivit", "2026-01-04T00:00:00Z", ms=1.0, config="tiny"),   # smoke
        record("peak", "minivit", "2026-01-02T00:00:03Z", n=2048, gflops=190.0),
        record("allreduce", "mpi", "2026-01-05T00:00:00Z", ms=0.17, numbers=206000,
               bytes=824000, processes=2, bus_GBps=4.8, mpi_library="MPICH 5.0.2"),
        {"what": "failed", "impl": "onnx", "of": "infer", "config": "mnist", "batch": 128,
         "time": "2026-01-06T00:00:00Z"},
        {"what": "meta", "impl": "minivit", "time": "2026-01-06T00:00:00Z"},
    ]


def test_table_keeps_the_latest_record_per_row_with_its_machine_and_commit():
    text = table.render(table_records())
    rows = [line for line in text.splitlines() if line.startswith("| amd-epyc-2c | mnist")]
    assert len(rows) == 3                                  # train minivit, train torch, infer
    train_minivit, train_torch, infer = rows
    assert "| train | minivit |" in train_minivit and "| 30.00 |" in train_minivit
    assert "40.00" not in text                             # the older record was replaced
    assert "| 45.00 |" in train_torch and "| 1.50x |" in train_torch   # the same run's ratio
    assert "| infer | minivit |" in infer and "x |" not in infer       # no ratio: no comparison
    assert "3 rounds" in train_minivit and "`abcdef0123`" in train_minivit
    assert "2026-01-02" in train_minivit and "numpy 2.4.6" in train_minivit
    assert "tiny" not in text and "onnx" not in text       # smoke runs and failures stay out
    assert "| 2048 | 190.0 |" in text and "| 206,000 | 824,000 |" in text
    assert "scipy-openblas 0.3.31, kernel Haswell" in text


def test_table_writes_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Bench\n\nmethod\n\n{table.START}\nold table\n{table.END}\n\nafter\n")
    results = tmp_path / "a.jsonl"
    write_records(results, table_records())
    table.main([str(results), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Bench\n\nmethod\n\n" + table.START + "\n")
    assert text.endswith(table.END + "\n\nafter\n") and "old table" not in text
    assert table.render(stamp.read([str(results)])) in text
    table.main([str(results), "--readme", str(readme)])
    assert readme.read_text() == text                      # the same records, the same file
    (tmp_path / "no_markers.md").write_text("# nothing\n")
    with pytest.raises(SystemExit, match="markers"):
        table.main([str(results), "--readme", str(tmp_path / "no_markers.md")])


def test_table_add_files_records_by_machine_once(tmp_path):
    run = tmp_path / "results.jsonl"
    recs = table_records()[:3] + [record("train", "minivit", "2026-02-01T00:00:00Z",
                                         tag="xeon-16c-nvidia-h100", device="gpu")]
    write_records(run, recs)
    readme = tmp_path / "README.md"
    readme.write_text(f"{table.START}\n{table.END}\n")
    store = tmp_path / "results"
    for _ in range(2):                                    # the second time adds nothing
        table.main(["--add", str(run), "--results-dir", str(store), "--readme", str(readme)])
    assert sorted(os.listdir(store)) == ["amd-epyc-2c.jsonl", "xeon-16c-nvidia-h100.jsonl"]
    assert len(read_records(store / "amd-epyc-2c.jsonl")) == 3
    assert "| xeon-16c-nvidia-h100 | mnist | 128 | GPU |" in readme.read_text()


def test_readme_table_is_generated_from_the_committed_results():
    """benchmarks/README.md's table is exactly what table.py makes of benchmarks/results/:
    no number in it that a record does not hold (rerun `python benchmarks/table.py`)."""
    readme = open(table.README, encoding="utf-8").read()
    assert readme.count(table.START) == 1 and readme.count(table.END) == 1
    files = sorted(os.path.join(stamp.RESULTS_DIR, f) for f in os.listdir(stamp.RESULTS_DIR)
                   if f.endswith(".jsonl")) if os.path.isdir(stamp.RESULTS_DIR) else []
    inside = readme[readme.index(table.START) + len(table.START):readme.index(table.END)]
    assert inside == "\n" + table.render(stamp.read(files))


# ---- the GPU run: its dry run on the CPU -------------------------------------------------------
TRAIN_DRIVER = """# the training command, accepting synthetic MNIST (its sums in $MINIVIT_TEST_SUMS)
import json, os
from minivit.data import mnist
mnist.MNIST_FILES.update(json.loads(os.environ["MINIVIT_TEST_SUMS"]))
from minivit.cli.train import entry
entry()
"""


def synthetic_mnist_folder(folder) -> dict:
    from conftest import idx_bytes, synthetic_mnist
    folder.mkdir()
    sums = {}
    for name, arr in synthetic_mnist(n_train=600, n_test=200).items():
        raw = idx_bytes(arr)
        (folder / name).write_bytes(raw)
        sums[name] = hashlib.sha256(raw).hexdigest()
    return sums


def test_gpu_run_dry_run(tmp_path):
    """bash benchmarks/gpu_run.sh OUTDIR --device cpu --tiny: every step of the GPU run on the
    CPU with the smoke model, in seconds; at most 7 files, all in OUTDIR; every step passes;
    the benchmark records are stamped and streamed into OUTDIR/results.jsonl."""
    sums = synthetic_mnist_folder(tmp_path / "mnist")
    (tmp_path / "train.py").write_text(TRAIN_DRIVER)
    out = tmp_path / "out"
    results_before = sorted(os.listdir(stamp.RESULTS_DIR)) if os.path.isdir(stamp.RESULTS_DIR) \
        else []
    env = {**os.environ, "MINIVIT_TEST_SUMS": json.dumps(sums), "PYTHON": sys.executable}
    r = subprocess.run(["bash", os.path.join(BENCH_DIR, "gpu_run.sh"), str(out), "--device", "cpu",
                        "--tiny", "--data", str(tmp_path / "mnist"), "--train-script",
                        str(tmp_path / "train.py")],
                       capture_output=True, text=True, timeout=240, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == sorted([gpu_run.ENV, gpu_run.SUMMARY, gpu_run.TESTS, gpu_run.TRAIN,
                            gpu_run.BENCH, gpu_run.RESULTS]) and len(files) <= 7
    summary = json.loads((out / gpu_run.SUMMARY).read_text())
    names = [s["name"] for s in summary["steps"]]
    assert names == ["env", "tests", "train", "bench-mnist-gpu", "bench-b16-gpu",
                     "bench-mnist-cpu", "bench-b16-cpu"]
    assert all(s["status"] == "passed" for s in summary["steps"]), summary["steps"]
    assert summary["counts"]["passed"] == 7 and summary["files"] == files
    env_json = json.loads((out / gpu_run.ENV).read_text())
    assert {"numpy", "cupy", "torch", "nvidia_smi", "machine", "versions"} <= set(env_json)
    assert "-k" in summary["steps"][1]["command"]
    assert "epoch 1" in (out / gpu_run.TRAIN).read_text()
    recs = read_records(out / gpu_run.RESULTS)
    assert len({x["run"] for x in recs}) == 1              # one run id for the whole sitting
    measured = {(x["what"], x["impl"]) for x in recs if x["what"] in ("train", "infer")}
    assert {("train", "minivit"), ("infer", "minivit")} <= measured
    if has("torch"):
        assert {("train", "torch"), ("infer", "torch")} <= measured
    for x in recs:
        assert_stamped(x)
        assert str(out) not in x["command"] and "--results OUTDIR/results.jsonl" in x["command"]
    after = sorted(os.listdir(stamp.RESULTS_DIR)) if os.path.isdir(stamp.RESULTS_DIR) else []
    assert after == results_before                         # nothing written into the repository


def test_gpu_run_steps_time_out_and_the_budget_holds(tmp_path):
    """A step past its own limit is killed (its process group) and the next still runs; a
    step that would not fit in what is left of the budget is not started."""
    py = sys.executable
    steps = [gpu_run.Step("slow", [py, "-c", "import time; time.sleep(60)"], "bench.txt", 1),
             gpu_run.Step("fine", [py, "-c", "print('fine')"], "bench.txt", 30),
             gpu_run.Step("skipped", [py, "-c", "pass"], "bench.txt", 30, skip="no data")]
    a = gpu_run.parse_args([str(tmp_path), "--device", "cpu", "--tiny", "--budget", "60"])
    summary = gpu_run.run_plan(steps, a)
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"slow": "timeout", "fine": "passed", "skipped": "not run"}
    assert summary["steps"][0]["seconds"] < 30
    assert "fine" in (tmp_path / "bench.txt").read_text()
    late = gpu_run.run_step(gpu_run.Step("late", [py, "-c", "pass"], "bench.txt", 60),
                            str(tmp_path), 5.0, os.environ.copy())
    assert late["status"] == "not run" and "out of time" in late["why"]


def test_gpu_run_extra_plan_dry_run(tmp_path):
    """The optional second run's steps build and run on the CPU too (one of them here)."""
    out = tmp_path / "out"
    assert gpu_run.main([str(out), "--plan", "extra", "--device", "cpu", "--tiny",
                         "--only", "layers-mnist-gpu"]) == 0
    summary = json.loads((out / gpu_run.SUMMARY).read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("layers-mnist-gpu", "passed")]
    recs = read_records(out / gpu_run.RESULTS)
    assert {"layers", "layers_total"} <= {x["what"] for x in recs}
    with pytest.raises(SystemExit, match="unknown step"):
        gpu_run.main([str(out), "--plan", "extra", "--only", "no-such-step"])


def test_gpu_run_plans_fit_the_lent_machine():
    """The GPU plans as built for the GPU: bench steps stream to OUTDIR/results.jsonl with one
    round and no quiet-wait, MNIST and ViT-B/16 batch 64 on CuPy (against torch when installed)
    and on the CPU's cores; the tests are the CuPy ones under a per-test timeout when
    pytest-timeout is installed; at most 7 files; a budget under 8 minutes."""
    for plan in ("main", "extra"):
        a = gpu_run.parse_args(["OUT", "--plan", plan, "--data", "mnist"])
        assert a.budget <= 8 * 60 - 20
        steps = gpu_run.PLANS[plan](a)
        logs = {s.log for s in steps if s.log} | {gpu_run.ENV, gpu_run.SUMMARY, gpu_run.RESULTS}
        assert len(logs) <= 7
        for s in steps:
            if s.temp:
                shutil.rmtree(s.temp, ignore_errors=True)
            cmd = s.cmd
            if "bench.py" in " ".join(cmd):
                assert cmd[cmd.index("--rounds") + 1] in ("1", "3")
                assert cmd[cmd.index("--wait-quiet") + 1] == "0"
                assert cmd[cmd.index("--results") + 1] == os.path.join(a.out, gpu_run.RESULTS)
    a = gpu_run.parse_args(["OUT", "--data", "mnist"])
    steps = {s.name: s for s in gpu_run.PLANS["main"](a)}
    for s in steps.values():
        if s.temp:
            shutil.rmtree(s.temp, ignore_errors=True)
    tests = steps["tests"].cmd
    assert "no:cacheprovider" in tests and "cupy" in tests[tests.index("-k") + 1]
    assert any(c.startswith("--timeout=") for c in tests) == has("pytest_timeout")
    for name, config, batch, device in (("bench-mnist-gpu", "mnist", "128", "gpu"),
                                        ("bench-b16-gpu", "vit-b16", "64", "gpu"),
                                        ("bench-mnist-cpu", "mnist", "128", "cpu"),
                                        ("bench-b16-cpu", "vit-b16", "64", "cpu")):
        cmd = steps[name].cmd
        assert cmd[cmd.index("--config") + 1] == config and cmd[cmd.index("--batch") + 1] == batch
        assert cmd[cmd.index("--device") + 1] == device
        impls = cmd[cmd.index("--impl") + 1].split(",")
        assert "train" in cmd[cmd.index("--what") + 1] and "infer" in cmd[cmd.index("--what") + 1]
        assert impls[0] == "minivit" and ("torch" in impls) == (device == "gpu" and has("torch"))
    assert steps["train"].cmd[steps["train"].cmd.index("--device") + 1] == "gpu"


def test_scale_table_rows_hold_each_implementation_and_the_ratios():
    """The scale table: one row per model and case, minivit's only where it loaded its model
    (--load), the speed ratio from the run's ratio record and the RSS ratio of the two rows."""
    def scaled(impl, ms, rss, loaded=True, run="s1", **kw):
        return record("infer", impl, "2026-02-01T00:00:00Z", ms=ms, run=run, batch=4,
                      config="dinov2-b14@518", peak_rss_mb=rss, aggregate=True, rounds=2,
                      setup={"procs": 1, "tf32": False, "loaded": loaded}, **kw)
    rows = [scaled("minivit", 5000.0, 700.0), scaled("transformers", 6000.0, 1000.0),
            scaled("torch", 9000.0, 2000.0),
            {"what": "ratio", "of": "infer", "run": "s1", "config": "dinov2-b14@518", "batch": 4,
             "device": "cpu", "minivit_over_transformers": 1.2, "time": "2026-02-01T00:00:01Z"}]
    text = table.render(rows)
    line = next(x for x in text.splitlines() if "| dinov2-b14@518 | 1370 | infer b4 |" in x)
    assert "| 5,000 |" in line and "| 6,000 |" in line and "| 9,000 |" in line
    assert "| 1.20x | 0.70x |" in line
    unloaded = [scaled("minivit", 5000.0, 700.0, loaded=False), rows[1]]
    assert "Scale with tokens" not in table.render(unloaded)       # minivit built in memory
