"""recoil_jax.ops.conv.cropped_conv: on maps smaller than the kernel it equals the full SAME
convolution (outputs, input and kernel gradients); elsewhere it is lax's convolution."""

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


@pytest.mark.parametrize("hw, k", [((2, 4), 5), ((1, 3), 7)])
def test_same_outputs_and_gradients_as_the_full_kernel(hw, k):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (2, *hw, 6))
  w = jax.random.normal(keys[1], (k, k, 6, 5))
  dy = jax.random.normal(keys[2], (2, *hw, 5))
  grads = lambda f: jax.jit(lambda x, w: jax.vjp(f, x, w)[1](dy))(x, w)  # noqa: E731
  # Dropping taps that multiply exact zeros changes only the summation order (float32).
  np.testing.assert_allclose(jax.jit(_cropped)(x, w), jax.jit(_full)(x, w), rtol=1e-5, atol=1e-5)
  (dx_c, dw_c), (dx_f, dw_f) = grads(_cropped), grads(_full)
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


def test_flax_conv_drop_in_keeps_the_parameters():
  x = jax.random.normal(jax.random.key(1), (1, 2, 4, 8))
  plain = nn.Conv(8, (5, 5), padding="SAME")
  cropped = nn.Conv(8, (5, 5), padding="SAME", conv_general_dilated=conv.cropped_conv)
  params = plain.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, cropped.init(jax.random.key(2), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(cropped.apply(params, x), plain.apply(params, x),
                             rtol=1e-5, atol=1e-5)


def test_uresnet_with_cropped_kernels_equals_the_plain_network():
  # A small UResNet whose deepest map (2×2) is smaller than its 5×5 deepest kernels.
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top
  kw = dict(initial_filters=2, depth=2, deepest_filters=8, deepest_blocks=1,
            blocks_per_level=1)
  images = jax.random.uniform(jax.random.key(3), (1, 3, 8, 8))
  cropped, plain = uresnet.UResNet(**kw), uresnet.UResNet(**kw, crop_kernels=False)
  variables = plain.init(jax.random.key(4), images, train=False)

  def loss(net):
    return lambda p: jnp.sum(jnp.sin(net.apply({**variables, "params": p}, images,
                                               train=False)))

  np.testing.assert_allclose(cropped.apply(variables, images, train=False),
                             plain.apply(variables, images, train=False), rtol=1e-5, atol=1e-5)
  g_c = jax.grad(loss(cropped))(variables["params"])
  g_p = jax.grad(loss(plain))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_c, g_p)
