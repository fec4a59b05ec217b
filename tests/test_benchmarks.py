"""benchmarks/: the smoke run works end to end and reports sane numbers, vit_flops matches hand
counts, and the PyTorch timing reference is the same model. Never asserts a time or a speed."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minivit import ViT, ViTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None
SMALL = dict(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=8, depth=2, heads=2,
             mlp_ratio=1.5)


def load(name: str):
    """Import benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_bench(*argv, timeout=120):
    """Run bench.py in a fresh process; return (stdout, stderr) after checking it exited 0."""
    r = subprocess.run([sys.executable, BENCH, *argv], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"bench.py {' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout, r.stderr


def json_records(stdout: str) -> list:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), f"not JSON lines:\n{stdout}"
    return [json.loads(line) for line in lines]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ---- vit_flops ---------------------------------------------------------------------------------
def test_vit_flops_hand_count():
    vit_flops = load("bench").vit_flops
    # Per image: P=4 patches, N=5 tokens, D=8, F=12, p*p*C=32, K=3.
    #   patch embed 2*4*32*8 = 2048
    #   block: qkv 2*5*8*24 = 1920, q k^T 2*5*5*8 = 400, a v 400, proj 2*5*8*8 = 640,
    #          fc1 2*5*8*12 = 960, fc2 960 -> 5280; two blocks 10560
    #   head 2*8*3 = 48                     -> 12656 per image
    assert vit_flops(ViTConfig(**SMALL), 3) == 3 * 12656
    # pre-logits R=5: + 2*8*5 = 80, and the head reads R: 2*5*3 = 30 instead of 48
    assert vit_flops(ViTConfig(**SMALL, representation_size=5), 3) == 3 * (12656 + 80 - 48 + 30)
    # heads only regroup the same products
    assert vit_flops(ViTConfig(**{**SMALL, "heads": 4}), 3) == 3 * 12656


def test_vit_flops_vit_b16_matches_published():
    """ViT-B/16 at 224: 17.6 G multiply-adds per image (DeiT paper, Table 1) = 35.2 GFLOP."""
    bench = load("bench")
    f = bench.vit_flops(ViTConfig(**bench.CONFIGS["vit-b16"]), 1)
    assert abs(f / 2 - 17.6e9) / 17.6e9 < 0.01, f


# ---- the smoke run -----------------------------------------------------------------------------
def test_smoke_json_has_every_part():
    recs = json_records(run_bench("--smoke", "--json")[0])
    by = {}
    for r in recs:
        by.setdefault(r["what"], []).append(r)
    assert set(by) >= {"meta", "peak", "train", "infer", "layers", "layers_total"}, sorted(by)
    meta = by["meta"][0]
    assert meta["impl"] == "minivit" and meta["params"] == ViT(
        ViTConfig(**load("bench").CONFIGS["tiny"])).num_params()
    assert positive(by["peak"][0]["gflops"])
    for what in ("train", "infer"):
        r = by[what][0]
        for k in ("ms", "images_per_s", "gflops", "gflop_per_step", "peak_rss_mb"):
            assert positive(r[k]), (what, k, r)
        assert r["steps"] == 3 and r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert r["images_per_s"] == pytest.approx(32 / r["ms"] * 1e3)
    assert by["train"][0]["gflop_per_step"] == pytest.approx(3 * by["infer"][0]["gflop_per_step"])
    layers = by["layers"]
    names = [r["layer"] for r in layers]
    for want in ("patch embed", "layernorm", "qkv", "attention core", "proj", "mlp", "head",
                 "loss"):
        assert any(want in n for n in names), (want, names)
    assert sum(r["share"] for r in layers) == pytest.approx(1.0)
    for r in layers:
        assert positive(r["ms"]) and r["calls"] >= 1
        if r["fwd_ms"] is not None:
            assert positive(r["fwd_ms"]) and positive(r["bwd_ms"])
            assert r["ms"] == pytest.approx(r["fwd_ms"] + r["bwd_ms"])
    assert [r["calls"] for r in layers if r["layer"].startswith("layernorm")] == [4]   # 2 x depth 2
    assert positive(by["layers_total"][0]["sum_ms"])


def test_smoke_table():
    out, _ = run_bench("--smoke", "--what", "infer,layers")
    assert "img/s" in out and "GFLOP/s" in out and "per-layer breakdown" in out
    assert "infer  minivit" in out


def test_runs_without_torch(tmp_path):
    """A torch that cannot be imported: minivit is measured, torch reported as skipped."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])}
    r = subprocess.run([sys.executable, BENCH, "--smoke", "--impl", "all", "--what", "infer"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch not installed; skipped" in r.stdout + r.stderr
    assert "infer  minivit" in r.stdout and "minivit/torch" not in r.stdout


def test_bad_what_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown.*train, infer"):
        load("bench").main(["--smoke", "--what", "speed"])


# ---- against PyTorch ---------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_impl_all_alternates_processes_and_reports_a_ratio():
    recs = json_records(run_bench("--smoke", "--impl", "all", "--what", "train", "--rounds", "2",
                                  "--steps", "2", "--warmup", "0", "--json", timeout=180)[0])
    rounds = [(r["impl"], r["round"]) for r in recs if r["what"] == "train" and "round" in r]
    assert rounds == [("minivit", 0), ("torch", 0), ("minivit", 1), ("torch", 1)]
    agg = {r["impl"]: r for r in recs if r["what"] == "train" and r.get("aggregate")}
    assert set(agg) == {"minivit", "torch"}
    for r in agg.values():
        assert r["rounds"] == 2 and positive(r["ms"]) and positive(r["gflops"])
    ratio = [r for r in recs if r["what"] == "ratio"]
    assert len(ratio) == 1 and positive(ratio[0]["minivit_over_torch"])
    assert ratio[0]["minivit_over_torch"] == pytest.approx(agg["torch"]["ms"] / agg["minivit"]["ms"])


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("extra", [{}, dict(pool="mean", gelu="erf", pos_embed="sincos",
                                            representation_size=5)])
def test_torch_reference_is_the_same_model(extra):
    """With minivit's weights loaded, the timing reference gives the same logits (float64)."""
    import torch
    TorchViT = load("torch_ref").TorchViT
    cfg = ViTConfig(**SMALL, dtype="float64", **extra)
    model = ViT(cfg, seed=0)
    rng = np.random.default_rng(0)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.5
    ref = TorchViT(cfg).double().load_minivit(model.params)
    assert sum(p.numel() for p in ref.parameters()) == model.num_params()
    x = rng.standard_normal((3, 2, 8, 8))
    got = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, model.forward(x), rtol=1e-10, atol=1e-12)
