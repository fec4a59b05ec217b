"""params.py: ParamDict views share one flat vector; assignment copies in place; shapes are fixed."""
import numpy as np
import pytest

from minivit import ViT, ViTConfig
from minivit.params import ParamDict

SHAPES = {"a.w": (2, 3), "a.b": (3,), "c": (1, 1, 4)}


def test_views_cover_the_flat_vector_in_order():
    p = ParamDict.zeros(SHAPES, "float64")
    assert p.flat.shape == (13,) and list(p) == list(SHAPES)
    assert p.offsets == {"a.w": (0, 6), "a.b": (6, 9), "c": (9, 13)}
    p.flat[:] = np.arange(13)
    np.testing.assert_array_equal(p["a.w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(p["c"], np.arange(9, 13).reshape(1, 1, 4))
    p["a.b"][...] = -1                                    # a view: the flat vector sees it
    np.testing.assert_array_equal(p.flat[6:9], [-1, -1, -1])


def test_assignment_copies_into_the_view_and_shapes_are_fixed():
    p = ParamDict.zeros(SHAPES, "float32")
    view = p["a.w"]
    p["a.w"] = np.ones((2, 3))                            # float64 in, float32 stays
    assert p["a.w"] is view and p.flat.dtype == np.float32 and p.flat[:6].sum() == 6
    p.update({"a.b": np.full(3, 2.0)})
    assert p.flat[6:9].tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match=r"a.w: cannot assign shape \(3, 2\).*reset_head"):
        p["a.w"] = np.ones((3, 2))
    with pytest.raises(KeyError, match="not a parameter"):
        p["new"] = np.ones(1)
    for op in (lambda: p.pop("a.w"), lambda: p.__delitem__("a.w"), p.clear):
        with pytest.raises(TypeError, match="names are fixed"):
            op()


def test_runs_merge_adjacent_keys():
    p = ParamDict.zeros(SHAPES, "float64")
    assert p.runs({"a.w", "a.b", "c"}) == [(0, 13)]
    assert p.runs({"a.w", "c"}) == [(0, 6), (9, 13)]
    assert p.runs(set()) == []


def test_from_arrays_copies():
    src = {"x": np.arange(4.0).reshape(2, 2), "y": np.ones(3)}
    p = ParamDict.from_arrays(src)
    src["x"][0, 0] = 99
    assert p["x"][0, 0] == 0 and p.flat.size == 7


def test_model_params_and_grads_are_flat_and_backward_writes_in_place():
    model = ViT(ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, num_classes=3))
    assert model.num_params() == model.params.flat.size
    assert list(model.params) == list(model.config.param_shapes()) == list(model.grads)
    flat = model.grads.flat
    logits = model.forward(np.random.default_rng(0).standard_normal((4, 1, 8, 8)), train=True)
    model.backward(np.ones_like(logits))
    assert model.grads.flat is flat and float(abs(flat).sum()) > 0
    model.zero_grad()
    assert not flat.any()
    head = model.params.flat
    model.reset_head(5)                                   # new shapes: new buffers
    assert model.params.flat is not head and model.params["head.w"].shape == (8, 5)
    assert model.params.flat.size == sum(np.prod(s) for s in model.config.param_shapes().values())
