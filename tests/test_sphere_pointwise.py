"""Pointwise nonlinearities on SO(3) signals: plain on the grid vs on a finer grid."""

import jax.numpy as jnp
import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import layers
from recoil_jax.ops.sphere import transforms
from recoil_jax.ops.sphere import wigner

L, N = 6, 3


def _signal(flmn):
  """float32 samples [1, 2N−1, n_β, n_α, C] of Wigner coefficients [2N−1, L, 2L−1, C]."""
  f = transforms.so3_inverse(jnp.asarray(flmn[None], jnp.complex64), L, N, "dh")
  return jnp.asarray(f, jnp.float32)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_identity_on_the_finer_grid_returns_a_band_limited_signal():
  x = _signal(wigner.random_flmn(np.random.default_rng(0), L, N, (2,)))
  np.testing.assert_array_equal(layers.so3_pointwise(x, jnp.tanh, oversample=1), jnp.tanh(x))
  assert _rel(layers.so3_pointwise(x, lambda v: v, oversample=2), x) < 1e-4


def test_relu_on_a_finer_grid_is_much_closer_to_equivariant():
  """Rotate-then-ReLU vs ReLU-then-rotate, compared in harmonic space at (L, N)."""
  rng = np.random.default_rng(1)
  flmn = wigner.random_flmn(rng, L, N, (2,))
  rot = grids.random_rotations(rng, 1)[0]
  x, xq = _signal(flmn), _signal(wigner.rotate_flmn(flmn, rot))
  relu = lambda v: jnp.maximum(v, 0)  # noqa: E731
  errs = {}
  for k in (1, 2):
    y, yq = (layers.so3_pointwise(s, relu, oversample=k) for s in (x, xq))
    fy = np.asarray(transforms.so3_forward(y, L, N, "dh"))[0]
    fyq = np.asarray(transforms.so3_forward(yq, L, N, "dh"))[0]
    errs[k] = _rel(fyq, wigner.rotate_flmn(fy.astype(np.complex128), rot))
  # Measured: 0.14 on the signal's own grid, 0.017 on the 2× grid (0.004 on 3×).
  assert errs[2] < 0.05 and errs[2] < errs[1] / 4, errs
