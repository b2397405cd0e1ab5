"""recoil_jax.ops.pool.max_pool: flax's non-overlapping max pooling, values and gradients
(ties included: the first maximum of a window in row-major order takes the gradient)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.ops import pool


def _flax(x, k):
  return nn.max_pool(x, (k, k), strides=(k, k))


@pytest.mark.parametrize("shape, k", [((2, 6, 8, 3), 2), ((1, 9, 6, 2), 3)])
def test_values_and_gradients_equal_flax_with_ties(shape, k):
  x = jax.random.normal(jax.random.key(0), shape)
  x = jnp.round(x * 2) / 2  # many exact ties within windows
  x = x.at[0, :k, :k, 0].set(1.0)  # one all-tied window
  out_shape = (shape[0], shape[1] // k, shape[2] // k, shape[3])
  g = jax.random.normal(jax.random.key(1), out_shape)
  np.testing.assert_array_equal(pool.max_pool(x, k), _flax(x, k))
  got = jax.vjp(lambda x: pool.max_pool(x, k), x)[1](g)[0]
  want = jax.vjp(lambda x: _flax(x, k), x)[1](g)[0]
  np.testing.assert_array_equal(got, want)
  # Every window passes its cotangent to exactly one input.
  assert int((got != 0).sum()) == int((g != 0).sum())


def test_under_vmap_and_jit_as_in_the_per_plane_uresnet():
  xs = jnp.round(jax.random.normal(jax.random.key(2), (3, 1, 4, 8, 5)) * 2) / 2
  loss = lambda f: lambda xs: jnp.sum(jnp.sin(jax.vmap(f)(xs)))  # noqa: E731
  ours = jax.jit(jax.grad(loss(lambda x: pool.max_pool(x, 2))))(xs)
  ref = jax.jit(jax.grad(loss(lambda x: _flax(x, 2))))(xs)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match=r"5 × 8 is not divisible by the window 2"):
    pool.max_pool(jnp.zeros((1, 5, 8, 2)))
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    pool.max_pool(jnp.zeros((5, 8, 2)))
