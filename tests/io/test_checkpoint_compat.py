"""Checkpoints written by earlier minivit versions still load: a format-1 file (written by
minivit 0.1.0, which kept mean, std and class names in the `extra` entry) gives the same model,
optimizer state and a typed Preprocessing."""
import os

import numpy as np

from minivit.io.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from minivit.optim import AdamW

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def test_format_1_checkpoint_loads_with_its_preprocessing(tmp_path):
    meta = load_checkpoint(os.path.join(HERE, "v1_checkpoint.npz"))
    model = meta["model"]
    assert meta["format_version"] == 1 and meta["step"] == 3
    x = np.load(os.path.join(HERE, "v1_checkpoint_input.npy"))
    # The logits were computed by 0.1.0. The float32 forward may round differently from one
    # version to the next (the tanh GELU is now computed through exp: 1 ulp here), so a few ulps
    # are allowed; a parameter loaded wrong would move the logits by far more.
    np.testing.assert_allclose(model.forward(x), np.load(os.path.join(HERE, "v1_checkpoint_logits.npy")),
                               rtol=5e-7, atol=0)
    pre = model.preprocessing
    assert pre.mean == [0.25] and pre.std == [0.5] and pre.class_names == ["a", "b", "c"]
    assert pre.image_size == 8 and pre.channels == 1
    opt = AdamW(model.params, lr=1e-2, decay=model.decay_keys())
    load_checkpoint(os.path.join(HERE, "v1_checkpoint.npz"), model, opt)      # optimizer state too
    assert opt.t == 3 and float(abs(opt.flat["v"]).sum()) > 0
    path = str(tmp_path / "again.npz")                 # re-saved: the current format, same model
    save_checkpoint(path, model, opt, step=3)
    again = load_checkpoint(path)
    assert again["format_version"] == FORMAT_VERSION and again["preprocessing"] == pre
    np.testing.assert_array_equal(again["model"].params.flat, model.params.flat)
