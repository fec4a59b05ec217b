"""benchmarks/: the smoke run works end to end and reports sane numbers, vit_flops matches hand
and published counts, --impl all alternates fresh processes, and the per-layer breakdown calls the
package's pairs with the right shapes. Never asserts a time or a speed."""
import json
import math
import os
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
import layers  # noqa: E402
import measure  # noqa: E402
import onnx_ref  # noqa: E402

needs_onnx = pytest.mark.skipif(not all(has(m) for m in onnx_ref.REQUIRES),
                                reason=f"needs {', '.join(onnx_ref.REQUIRES)} ({onnx_ref.INSTALL})")

SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5)


def run_bench(*argv, env=None):
    """Run bench.py in a fresh process; return (stdout, stderr) after checking it exited 0."""
    r = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "bench.py"), *argv],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, f"bench.py {' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout, r.stderr


def json_records(stdout: str) -> list:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), f"not JSON lines:\n{stdout}"
    return [json.loads(line) for line in lines]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def num_params(cfg: ViTConfig) -> int:
    return sum(math.prod(s) for s in cfg.param_shapes().values())


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


@pytest.mark.parametrize("name,gmacs,params", [("vit-b16", 17.6, 86_567_656),
                                               ("vit-s16", 4.6, 22_050_664)])
def test_configs_match_published(name, gmacs, params):
    """Multiply-adds per 224 x 224 image (DeiT paper, Table 1: ViT-B 17.6 G, DeiT-S 4.6 G) and
    the parameter counts of timm's vit_base_patch16_224 / vit_small_patch16_224."""
    cfg = ViTConfig(**bench.CONFIGS[name])
    f = measure.vit_flops(cfg, 1)
    assert abs(f / 2 - gmacs * 1e9) / (gmacs * 1e9) < 0.01, f
    assert num_params(cfg) == params


def test_dinov2_s14_shape():
    cfg = ViTConfig(**bench.CONFIGS["dinov2-s14"])
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
    mnist, b16 = (ViTConfig(**bench.CONFIGS[k]) for k in ("mnist", "vit-b16"))
    assert sum(measure.batch_pieces(128, mnist)) == 128
    assert measure.batch_pieces(8, mnist) == [8]           # below two pieces of MIN_PIECE
    assert measure.batch_pieces(8, b16) == [4, 4]          # ViT-B/16: 4 x 197 rows each


# ---- the command line --------------------------------------------------------------------------
def test_smoke_json_has_every_part():
    recs = json_records(run_bench("--smoke", "--json")[0])
    by = {}
    for r in recs:
        by.setdefault(r["what"], []).append(r)
    assert set(by) >= {"meta", "peak", "train", "infer", "layers", "layers_total"}, sorted(by)
    meta = by["meta"][0]
    assert meta["impl"] == "minivit"
    assert meta["params"] == num_params(ViTConfig(**bench.CONFIGS["tiny"]))
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

    def fake_child(cmd, threads, procs=1):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        assert "--json" in cmd and threads == 2 and procs == 1
        calls.append((impl, what))
        ms = {"minivit": 10.0, "torch": 20.0}[impl] + len(calls)
        if what == "peak":
            return [{"what": "peak", "impl": impl, "gflops": 100.0}]
        return [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0, "peak_rss_mb": 50.0,
                 "other_cores": 0.0}]

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

    def fake_child(cmd, threads, procs=1):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        calls.append((impl, what))
        if what == "peak":
            return [{"what": "peak", "impl": impl, "gflops": 100.0}]
        ms = {"minivit": 10.0, "torch": 20.0, "torch-sdpa": 15.0}[impl]
        return [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0}]

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
                                  "--warmup", "0", "--json")[0])
    meta = {r["impl"]: r for r in recs if r["what"] == "meta"}
    assert meta["torch"]["params"] == meta["minivit"]["params"] == meta["torch-sdpa"]["params"]
    assert meta["torch"]["sdpa"] is False and meta["torch-sdpa"]["sdpa"] is True
    agg = {r["impl"]: r for r in recs if r["what"] == "train" and r.get("aggregate")}
    assert set(agg) == {"minivit", "torch", "torch-sdpa"}
    assert all(positive(r["ms"]) for r in agg.values())
    ratio = [r for r in recs if r["what"] == "ratio"]
    assert len(ratio) == 1 and positive(ratio[0]["minivit_over_torch"])
    assert positive(ratio[0]["minivit_over_torch-sdpa"])


# ---- ONNX Runtime ------------------------------------------------------------------------------
def test_impl_all_skips_onnx_training(monkeypatch):
    """With onnx installed, --impl all alternates three implementations for inference; for the
    training step onnx starts no process and leaves one "skipped" record with its reason, and
    the ratios name each implementation measured (children faked: no timing here)."""
    calls = []

    def fake_child(cmd, threads, procs=1):
        impl, what = cmd[cmd.index("--impl") + 1], cmd[cmd.index("--what") + 1]
        calls.append((impl, what))
        ms = {"minivit": 10.0, "torch": 20.0, "onnx": 5.0}[impl]
        return [{"what": what, "impl": impl, "ms": ms, "gflop_per_step": 1.0, "peak_rss_mb": 50.0}]

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
    assert set(ratio["train"]) == {"what", "of", "aggregate", "minivit_over_torch"}
    assert ratio["infer"]["minivit_over_torch"] == pytest.approx(2.0)
    assert ratio["infer"]["minivit_over_onnx"] == pytest.approx(0.5)


def test_onnx_missing_is_skipped_with_the_fix(monkeypatch, capsys):
    """--impl onnx without its packages: a "skipped" record that names the extra, no error."""
    monkeypatch.setattr(onnx_ref, "missing", lambda: ["onnxruntime", "onnxscript"])
    recs = bench.main(["--config", "tiny", "--impl", "onnx", "--what", "infer", "--json"])
    assert [r["what"] for r in recs] == ["skipped"]
    assert "onnxruntime, onnxscript not installed" in recs[0]["reason"]
    assert onnx_ref.INSTALL in recs[0]["reason"]


@needs_onnx
def test_onnx_export_matches_torch(tmp_path):
    """The exported reference, run by ONNX Runtime with every graph optimization, gives the
    logits of TorchBench's model (same seed, same weights) on the benchmark's input batch."""
    import torch
    cfg = ViTConfig(**bench.CONFIGS["tiny"])
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
                                  "--wait-quiet", "0", "--json")[0])
    by = {r["what"]: r for r in recs}
    assert set(by) == {"meta", "skipped", "infer"}
    meta = by["meta"]
    assert meta["impl"] == "onnx" and meta["params"] == num_params(ViTConfig(**bench.CONFIGS["tiny"]))
    assert meta["onnx_rel_err"] < onnx_ref.REL_TOL and meta["ort_threads"] == 2
    assert meta["providers"] == ["CPUExecutionProvider"]
    assert by["skipped"]["of"] == "train" and "inference only" in by["skipped"]["reason"]
    for k in ("ms", "images_per_s", "gflops", "peak_rss_mb"):
        assert positive(by["infer"][k]), k
    assert by["infer"]["steps"] == 2
