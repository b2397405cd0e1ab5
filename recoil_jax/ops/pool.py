"""Non-overlapping max pooling whose gradient is elementwise work, not an index scatter.

``flax.linen.max_pool(x, (k, k), strides=(k, k))`` lowers to ``reduce_window``; its gradient
is XLA's ``select_and_scatter``, which XLA:CPU rewrites into a ``reduce_window`` over
(value, index) pairs with int32 iotas of the full input shape. In the UResNet's training
step at 3×640×1024 those index arrays (3×640×1024×8 int32 per level-0 pool) and the scatter
were among the longest ops of the step (``scripts/profile_uresnet_step.py``).

``max_pool`` views the map as [N, H/k, k, W/k, k, C] and takes the maximum over the two
window axes; its custom gradient sends each output's cotangent to the first input in the
window (row-major order) equal to the maximum, as ``select_and_scatter`` with
``select = ge`` does, so both the values and the gradients equal flax's (ties included),
from reads of x, the pooled map and the cotangent only.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp


def _windows(x: jax.Array, k: int) -> jax.Array:
  """[N, H, W, C] → [N, H/k, k, W/k, k, C] (a reshape, no copy)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // k, k, w // k, k, c)


def _first_max_mask(x: jax.Array, pooled: jax.Array, k: int) -> jax.Array:
  """Boolean [N, H/k, k, W/k, k, C]: True at the first (row-major) maximum of each window."""
  windows = _windows(x, k)
  taken = None
  masks = {}
  for dy, dx in itertools.product(range(k), range(k)):
    hit = windows[:, :, dy, :, dx, :] == pooled
    masks[dy, dx] = hit if taken is None else hit & ~taken
    taken = hit if taken is None else taken | hit
  rows = [jnp.stack([masks[dy, dx] for dx in range(k)], axis=3) for dy in range(k)]
  return jnp.stack(rows, axis=2)


def _pool_values(x: jax.Array, k: int) -> jax.Array:
  return _windows(x, k).max(axis=(2, 4))


def _pool_fwd(x, k):
  pooled = _pool_values(x, k)
  return pooled, (x, pooled)


def _pool_bwd(k, residuals, g):
  x, pooled = residuals
  mask = _first_max_mask(x, pooled, k)
  dx = jnp.where(mask, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  return (dx.reshape(x.shape),)


_pool = jax.custom_vjp(_pool_values, nondiff_argnums=(1,))
_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
  """Max pooling with window = stride = ``window`` on a channels-last map.

  Args:
    x: [N, H, W, C] feature map; H and W divisible by ``window`` (as VALID pooling of
      flax with equal window and stride, which drops no pixel then).
    window: pooling window and stride, pixels.

  Returns:
    [N, H / window, W / window, C]; equal to ``flax.linen.max_pool(x, (window, window),
    strides=(window, window))``, with the same gradient (module docstring).
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool expects [N, H, W, C]; got shape {x.shape}")
  if x.shape[1] % window or x.shape[2] % window:
    raise ValueError(f"max_pool: H × W = {x.shape[1]} × {x.shape[2]} is not divisible by "
                     f"the window {window}")
  return _pool(x, window)
