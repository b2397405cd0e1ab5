"""scripts/profile_conv_wgrad.py: every weight-gradient route it times computes XLA's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_module

wgrad = load_module("scripts/profile_conv_wgrad.py")


def test_routes_agree_with_xla_weight_gradient():
  k = 3  # The UResNet's level kernels (the 5x5 deepest blocks use the same code paths).
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (2, 6, 8, 4))
  w = jax.random.normal(keys[1], (k, k, 4, 4))
  dy = jax.random.normal(keys[2], (2, 6, 8, 4))
  # Reference: the gradient of <conv(x, w), dy> written as a sum, differentiated by jax.grad.
  ref = jax.grad(lambda w_: jnp.sum(wgrad.conv(x, w_) * dy))(w)
  for name, fn in wgrad.routes(k, chunk=16).items():
    np.testing.assert_allclose(fn(x, w, dy), ref, rtol=1e-5, atol=1e-4, err_msg=name)


def test_chunk_must_divide_rows():
  x = jnp.ones((1, 3, 3, 2))
  with pytest.raises(ValueError, match="--chunk 4 must divide"):
    wgrad.wgrad_chunked(x, x, 3, 4)
