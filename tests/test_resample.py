"""resample.py: interpolation matrices and position-table resizing, against hand examples,
scipy.ndimage.zoom semantics and torch.nn.functional.interpolate."""

import numpy as np
import pytest

from minivit.resample import interp_matrix, resize_pos_embed

from conftest import needs_torch, relerr



def ramp_table(g, D=3, seed=0):
    """CLS row + a grid whose channels are linear in (row, col): a r + b c + d."""
    rng = np.random.default_rng(seed)
    a, b, d = rng.standard_normal((3, D))
    r, c = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    grid = r[..., None] * a + c[..., None] * b + d                        # (g, g, D)
    return np.concatenate([rng.standard_normal((1, 1, D)), grid.reshape(1, g * g, D)], 1), (a, b, d)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align", [True, False])
def test_resize_identity_exact(method, align):
    pos = np.random.default_rng(0).standard_normal((1, 17, 5))
    assert np.array_equal(resize_pos_embed(pos, 4, method, align), pos)
    for n in (1, 2, 5, 14):
        assert np.array_equal(interp_matrix(n, n, method, align), np.eye(n))


@pytest.mark.parametrize("g, g2", [(4, 7), (7, 4), (3, 12), (14, 24)])
def test_resize_shape_cls_row_and_linear_ramp(g, g2):
    pos, (a, b, d) = ramp_table(g)
    out = resize_pos_embed(pos, g2)                                      # bilinear, corners aligned
    assert out.shape == (1, 1 + g2 * g2, 3)
    assert np.array_equal(out[:, 0], pos[:, 0])
    u = np.arange(g2) * (g - 1) / (g2 - 1)                               # source coordinates
    r, c = np.meshgrid(u, u, indexing="ij")
    want = r[..., None] * a + c[..., None] * b + d
    assert relerr(out[0, 1:].reshape(g2, g2, 3), want) < 1e-12
    # pixel-area alignment reproduces the ramp wherever the source lies inside the grid
    out = resize_pos_embed(pos, g2, align_corners=False)[0, 1:].reshape(g2, g2, 3)
    u = (np.arange(g2) + 0.5) * g / g2 - 0.5
    inside = (u >= 0) & (u <= g - 1)
    r, c = np.meshgrid(u[inside], u[inside], indexing="ij")
    want = r[..., None] * a + c[..., None] * b + d
    assert relerr(out[np.ix_(inside, inside)], want) < 1e-12


def test_resize_hand_example_equals_scipy_zoom_order1():
    """2x2 -> 3x3 with corners aligned: what scipy.ndimage.zoom(grid, 1.5, order=1) returns."""
    pos = np.array([9.0, 0.0, 1.0, 2.0, 3.0]).reshape(1, 5, 1) * np.array([1.0, -2.0])
    out = resize_pos_embed(pos, 3)
    want = np.array([[0, .5, 1], [1, 1.5, 2], [2, 2.5, 3]])[..., None] * np.array([1.0, -2.0])
    assert np.array_equal(out[0, 1:], want.reshape(9, 2))
    assert np.array_equal(out[0, 0], pos[0, 0])


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_resize_smooth_grid_stays_smooth(method):
    """A low-frequency sine sampled on 8x8, upsampled to 20x20, stays within the interpolation
    error bound of the true function (bilinear: h^2/8 max|f''| per axis)."""
    g, g2 = 8, 20
    f = lambda r, c: np.sin(0.5 * r) * np.cos(0.4 * c)                  # noqa: E731
    r, c = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    pos = np.concatenate([np.zeros((1, 1, 1)), f(r, c).reshape(1, g * g, 1)], 1)
    out = resize_pos_embed(pos, g2, method)[0, 1:, 0].reshape(g2, g2)
    u = np.arange(g2) * (g - 1) / (g2 - 1)
    R, C = np.meshgrid(u, u, indexing="ij")
    err = np.abs(out - f(R, C)).max()
    assert err <= (0.5 ** 2 + 0.4 ** 2) / 8, err                          # h = 1, |f_rr|, |f_cc|


@needs_torch
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("g, g2", [(4, 9), (9, 4), (5, 5 * 3 - 1)])
def test_resize_matches_torch_interpolate(method, align, g, g2):
    import torch
    pos = np.random.default_rng(g * g2).standard_normal((1, 1 + g * g, 6))
    out = resize_pos_embed(pos, g2, method, align)
    grid = torch.from_numpy(pos[0, 1:].reshape(1, g, g, 6)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(g2, g2), mode=method, align_corners=align)
    ref = ref.permute(0, 2, 3, 1).reshape(1, g2 * g2, 6).numpy()
    assert relerr(out[:, 1:], ref) < 1e-12


def test_resize_rejects_bad_tables():
    with pytest.raises(ValueError, match="1 \\(CLS\\) \\+ grid\\^2"):
        resize_pos_embed(np.zeros((1, 16, 4)), 3)                       # no CLS row
    with pytest.raises(ValueError, match="\\(1, N, D\\)"):
        resize_pos_embed(np.zeros((17, 4)), 3)
    with pytest.raises(ValueError, match="method"):
        resize_pos_embed(np.zeros((1, 17, 4)), 3, method="nearest")
    with pytest.raises(ValueError, match="positive integer"):
        resize_pos_embed(np.zeros((1, 17, 4)), 0)


@needs_torch
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("g, g2", [(37, 16), (14, 24), (9, 4), (7, 5), (4, 9), (3, 3 * 7)])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_antialiased_resize_matches_torch(method, g, g2, prefix):
    """antialias=True (timm's resample_abs_pos_embed, DINOv2 with registers) against
    F.interpolate(antialias=True) in float64, shrinking and growing; the class rows stay."""
    import torch
    pos = np.random.default_rng(g * g2 + prefix).standard_normal((1, prefix + g * g, 5))
    out = resize_pos_embed(pos, g2, method, align_corners=False, prefix=prefix, antialias=True)
    grid = torch.from_numpy(pos[0, prefix:].reshape(1, g, g, 5)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(g2, g2), mode=method, align_corners=False,
                                          antialias=True)
    ref = ref.permute(0, 2, 3, 1).reshape(1, g2 * g2, 5).numpy()
    assert relerr(out[:, prefix:], ref) < 1e-12
    assert np.array_equal(out[:, :prefix], pos[:, :prefix])


def test_antialias_needs_pixel_centres():
    with pytest.raises(ValueError, match="align_corners=False"):
        interp_matrix(4, 2, "bicubic", align_corners=True, antialias=True)
    W = interp_matrix(9, 4, "bicubic", align_corners=False, antialias=True)
    np.testing.assert_allclose(W.sum(1), 1.0, rtol=1e-14)               # rows renormalized
