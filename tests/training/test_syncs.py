"""How often a training step waits for the device: once (issue: fewer host syncs).

No GPU is needed to count: `Device` arrays are NumPy arrays that count every read by the host
(float(), int(), bool(), .item(), .tolist()) as a sync, the way a CuPy array would block there,
and backend.to_numpy counts the explicit copies. The model's parameters, gradients, images and
labels are Device arrays, so everything computed from them is too, and clip_grad_norm takes its
device path (as on CuPy)."""
import numpy as np
import pytest

from minivit import ViT, ViTConfig, backend, optim
from minivit.params import ParamDict
from minivit.training import loop


class Device(np.ndarray):
    """A NumPy array standing in for a device array: host reads are counted in Device.reads."""
    reads = 0

    def _read(self):
        Device.reads += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    def __bool__(self):
        return bool(self._read())

    def __index__(self):
        return self._read().__index__()

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()


@pytest.fixture
def counted(monkeypatch):
    copies = []

    def to_numpy(a):
        copies.append(a.shape)
        return np.asarray(a).view(np.ndarray)
    monkeypatch.setattr(backend, "to_numpy", to_numpy)
    monkeypatch.setattr(optim, "_on_device", lambda a: True)
    Device.reads = 0
    return copies


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_training_step_waits_for_the_device_once(counted, dropout):
    cfg = ViTConfig(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2,
                    heads=2, dropout=dropout, drop_path=dropout)
    model = ViT(cfg, seed=0)
    shapes = {k: v.shape for k, v in model.params.items()}
    model.params = ParamDict(model.params.flat.view(Device), shapes)
    model.grads = ParamDict(model.grads.flat.view(Device), shapes)
    opts = loop.TrainOptions(clip=1e-3)                   # a clip that scales
    opt = loop.make_optimizer(model, opts)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32).view(Device)
    y = np.array([0, 1, 2, 1]).view(Device)
    for _ in range(2):
        Device.reads, counted[:] = 0, []
        r = loop.train_step(model, opt, x, y, 1e-3, opts)
        assert Device.reads == 0, "a host read of a device array"
        assert counted == [(2,)]                          # loss sum and hits, in one copy
        assert np.isfinite(r.loss) and 0 <= r.hits <= 4
    norm = np.sqrt(float((model.grads.flat.view(np.ndarray) ** 2).sum()))
    assert norm == pytest.approx(1e-3, rel=1e-5)          # clipped on the "device"


def test_the_counting_shim_sees_what_the_reference_loss_reads(counted):
    """The shim can fail: cross_entropy_forward checks labels and returns a host float."""
    from minivit.layers import cross_entropy_forward
    logits = np.zeros((2, 3), np.float32).view(Device)
    cross_entropy_forward(logits, np.array([0, 2]).view(Device))
    assert Device.reads >= 3                              # min, max of the labels; the mean
