"""recoil_jax.ops.conv: ``cropped_conv`` equals the full SAME convolution on maps smaller than
the kernel, and ``small_map_conv`` / ``patch_matmul_conv`` equal it on small maps (outputs,
input and kernel gradients); elsewhere both are lax's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from recoil_jax.ops import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _full(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def _cropped(x, w):
  return conv.cropped_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def _small_map(x, w):
  return conv.small_map_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


@pytest.mark.parametrize("hw, k", [((2, 4), 5), ((1, 3), 7)])
@pytest.mark.parametrize("fast", [_cropped, _small_map], ids=["cropped", "small_map"])
def test_same_outputs_and_gradients_as_the_full_kernel(hw, k, fast):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, *hw, 6))
  w = jax.random.normal(keys[1], (k, k, 6, 5))
  dy = jax.random.normal(keys[2], (2, *hw, 5))
  grads = lambda f: jax.jit(lambda x, w: jax.vjp(f, x, w)[1](dy))(x, w)  # noqa: E731
  # Dropping taps that multiply exact zeros changes only the summation order (float32).
  np.testing.assert_allclose(jax.jit(fast)(x, w), jax.jit(_full)(x, w), rtol=1e-5, atol=1e-5)
  (dx_c, dw_c), (dx_f, dw_f) = grads(fast), grads(_full)
  np.testing.assert_allclose(dx_c, dx_f, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw_c, dw_f, rtol=1e-5, atol=1e-5)
  assert dw_c.shape == w.shape
  h, wd = hw
  if k > 2 * h - 1:  # The dropped rows get exactly zero gradient, as from the full kernel.
    assert np.all(np.asarray(dw_c)[:k // 2 - (h - 1)] == 0)


def test_the_kernel_is_cut_only_where_the_map_is_smaller(monkeypatch):
  seen = []
  real = lax.conv_general_dilated

  def spy(lhs, rhs, *a, **kw):
    seen.append(rhs.shape)
    return real(lhs, rhs, *a, **kw)

  monkeypatch.setattr(conv.lax, "conv_general_dilated", spy)
  w = jnp.ones((5, 5, 3, 2))
  conv.cropped_conv(jnp.ones((1, 2, 4, 3)), w, (1, 1), "SAME", dimension_numbers=NHWC)
  conv.cropped_conv(jnp.ones((1, 2, 4, 3)), w, (1, 1), "VALID", dimension_numbers=NHWC)
  conv.cropped_conv(jnp.ones((1, 8, 8, 3)), w, (1, 1), "SAME", dimension_numbers=NHWC)
  # 2×4 map: 3×5 taps; VALID or a map as large as the kernel: untouched.
  assert seen == [(3, 5, 3, 2), (5, 5, 3, 2), (5, 5, 3, 2)]


@pytest.mark.parametrize("shape, k", [((2, 3, 5, 4), 3), ((1, 4, 4, 3), 4), ((3, 2, 2, 5), 1),
                                      ((1, 10, 16, 6), 5)])
def test_patch_matmul_equals_lax_with_gradients(shape, k):
  # Odd, even and 1×1 kernels; SAME pads (k - 1) // 2 before, the rest after, as lax.
  keys = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(keys[0], shape)
  w = jax.random.normal(keys[1], (k, k, shape[-1], 7))
  dy = jax.random.normal(keys[2], (*shape[:-1], 7))
  patch = lambda x, w: conv.patch_matmul_conv(x, w)  # noqa: E731
  np.testing.assert_allclose(jax.jit(patch)(x, w), jax.jit(_full)(x, w), rtol=1e-5, atol=1e-5)
  got = jax.jit(lambda x, w: jax.vjp(patch, x, w)[1](dy))(x, w)
  want = jax.jit(lambda x, w: jax.vjp(_full, x, w)[1](dy))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, k, dtype", [((2, 20, 24, 8), 3, jnp.float32),
                                             ((1, 32, 16, 5), 5, jnp.float32),
                                             ((1, 24, 24, 4), 3, jnp.bfloat16)])
def test_blocked_weight_gradient_conv_equals_lax(shape, k, dtype):
  # float32: summation order only; bfloat16: both round the same float32 sums to 8 bits.
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  keys = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(keys[0], shape).astype(dtype)
  w = jax.random.normal(keys[1], (k, k, shape[-1], 6)).astype(dtype)
  dy = jax.random.normal(keys[2], (*shape[:-1], 6)).astype(dtype)
  ours = lambda x, w: conv.blocked_wgrad_conv(x, w)  # noqa: E731
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  np.testing.assert_allclose(f32(jax.jit(ours)(x, w)), f32(jax.jit(_full)(x, w)), **tol)
  got = jax.jit(lambda x, w: jax.vjp(ours, x, w)[1](dy))(x, w)
  want = jax.jit(lambda x, w: jax.vjp(_full, x, w)[1](dy))(x, w)
  for a, b in zip(got, want):
    assert a.dtype == b.dtype
    scale = float(np.abs(f32(b)).max())
    np.testing.assert_allclose(f32(a) / scale, f32(b) / scale, **tol)


def test_blocked_weight_gradient_sums_over_a_vmapped_plane_axis():
  # The UResNet maps its planes with shared weights: the kernel gradient sums the planes.
  x = jax.random.normal(jax.random.key(7), (3, 1, 20, 20, 4))
  w = jax.random.normal(jax.random.key(8), (3, 3, 4, 4))
  loss = lambda f: lambda w: jnp.sum(jnp.sin(jax.vmap(lambda xi: f(xi, w))(x)))  # noqa: E731
  got = jax.jit(jax.grad(loss(conv.blocked_wgrad_conv)))(w)
  want = jax.jit(jax.grad(loss(_full)))(w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_small_map_conv_takes_the_matmul_only_on_small_plain_maps(monkeypatch):
  calls, blocked = [], []
  real, real_blocked = conv.patch_matmul_conv, conv.blocked_wgrad_conv
  monkeypatch.setattr(conv, "patch_matmul_conv",
                      lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
  monkeypatch.setattr(conv, "blocked_wgrad_conv",
                      lambda *a, **kw: blocked.append(a[0].shape) or real_blocked(*a, **kw))
  w = jnp.ones((3, 3, 2, 2))
  small, medium, large = jnp.ones((1, 4, 4, 2)), jnp.ones((1, 32, 32, 2)), jnp.ones((1, 64, 64, 2))
  conv.small_map_conv(small, w, (1, 1), "SAME", dimension_numbers=NHWC)
  conv.small_map_conv(medium, w, (1, 1), "SAME", dimension_numbers=NHWC)  # 256 < 1024 < 4096: lax
  conv.small_map_conv(large, w, (1, 1), "SAME", dimension_numbers=NHWC)  # 4096 positions
  conv.small_map_conv(small, w, (2, 2), "SAME", dimension_numbers=NHWC)  # strided
  conv.small_map_conv(small, w, (1, 1), "VALID", dimension_numbers=NHWC)
  nchw = jnp.ones((1, 2, 4, 4))
  conv.small_map_conv(nchw, jnp.ones((2, 2, 3, 3)), (1, 1), "SAME",
                      dimension_numbers=("NCHW", "OIHW", "NCHW"))  # not channels-last
  wide = jnp.ones((1, 64, 64, conv.BLOCKED_WGRAD_MAX_CHANNELS + 1))
  conv.small_map_conv(wide, jnp.ones((3, 3, wide.shape[-1], 2)), (1, 1), "SAME",
                      dimension_numbers=NHWC)  # too many channels: lax
  conv.small_map_conv(large, jnp.ones((2, 2, 2, 2)), (1, 1), "SAME",
                      dimension_numbers=NHWC)  # even kernel: lax
  assert calls == [(1, 4, 4, 2)]
  assert blocked == [(1, 64, 64, 2)]  # the large map, 3×3, 2 channels
  assert conv.SMALL_MAP_POSITIONS < 32 * 32 < conv.BLOCKED_WGRAD_MIN_POSITIONS <= 64 * 64


def test_flax_conv_drop_in_keeps_the_parameters():
  x = jax.random.normal(jax.random.key(1), (1, 2, 4, 8))
  plain = nn.Conv(8, (5, 5), padding="SAME")
  params = plain.init(jax.random.key(2), x)
  for fast in (conv.cropped_conv, conv.small_map_conv):
    cropped = nn.Conv(8, (5, 5), padding="SAME", conv_general_dilated=fast)
    assert jax.tree.map(jnp.shape, cropped.init(jax.random.key(2), x)) == jax.tree.map(
        jnp.shape, params)
    np.testing.assert_allclose(cropped.apply(params, x), plain.apply(params, x),
                               rtol=1e-5, atol=1e-5)


def test_uresnet_with_small_map_convs_equals_the_plain_network(monkeypatch):
  # A one-level UResNet: its level-0 3×3 convolutions (16×32 per plane, the blocked weight
  # gradient's threshold lowered to take them) take the blocked weight gradient, the deepest
  # 5×5 ones (8×16) the patch matmul.
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(conv, "BLOCKED_WGRAD_MIN_POSITIONS", 16 * 32)
  kw = dict(initial_filters=2, depth=1, deepest_filters=8, deepest_blocks=1,
            blocks_per_level=1)
  images = jax.random.uniform(jax.random.key(3), (1, 3, 16, 32))
  cropped, plain = uresnet.UResNet(**kw), uresnet.UResNet(**kw, small_map_convs=False)
  variables = plain.init(jax.random.key(4), images, train=False)

  def loss(net):
    return lambda p: jnp.sum(jnp.sin(net.apply({**variables, "params": p}, images,
                                               train=False)))

  # One compilation per network: the loss (a function of every logit) and its gradient.
  l_c, g_c = jax.jit(jax.value_and_grad(loss(cropped)))(variables["params"])
  l_p, g_p = jax.jit(jax.value_and_grad(loss(plain)))(variables["params"])
  np.testing.assert_allclose(l_c, l_p, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_c, g_p)
