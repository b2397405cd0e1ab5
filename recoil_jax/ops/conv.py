"""2D/N-d SAME convolutions that skip work XLA:CPU does badly on small feature maps.

Two exact rewrites of a stride-1, undilated, SAME ``lax.conv_general_dilated``:

* **Cropped kernels.** On a map smaller than the kernel (the UResNet's deepest level: 5×5
  kernels on a 2×4 map at 3×128×256) the taps more than n − 1 rows or columns from the centre
  only ever meet the zero padding. ``cropped_conv`` slices them off: the output and the input
  gradient are unchanged and the kernel gradient of the dropped taps is zero either way
  (their inputs are zeros), so the result is exact up to summation order.
* **Patch matmul on small maps.** With few output positions (batch · pixels ≤
  ``SMALL_MAP_POSITIONS``) ``small_map_conv`` gathers the k×k patches (im2col, by slicing
  the padded map) and does one [positions, k²·C_in] · [k²·C_in, C_out] matmul. XLA:CPU's
  convolution, its input gradient (which reverses the kernel, a copy of all k²·C_in·C_out
  weights per call) and its weight gradient are slow there: a whole-step profile of the
  3×128×256 UResNet (``scripts/profile_uresnet_step.py``) put its deepest level, 8 output
  positions, at about a quarter of the step. The matmul's gradients are matmuls too.

* **Blocked weight gradient on large maps.** For odd square kernels on maps with at least
  ``BLOCKED_WGRAD_MIN_POSITIONS`` positions and at most ``BLOCKED_WGRAD_MAX_CHANNELS`` input channels,
  ``small_map_conv`` keeps XLA's forward and input gradient but computes the weight gradient
  as row blocks of ~1 MB of im2col patches, one [C_out, positions] · [positions, k²·C_in]
  matmul per block (``blocked_weight_gradient``). XLA:CPU's own weight-gradient convolution
  took 5× its forward at 32 channels on 160×256 in the 3×640×1024 UResNet step; routing the
  8–64-channel 3×3 convolutions here cut that step's CPU time by 6 % (user 10.9 → 10.3 s per
  step on one core, alternating runs; 3×128×256: −5 %).

Everywhere else ``small_map_conv`` is exactly ``lax.conv_general_dilated``.

Use: ``flax.linen.Conv(..., conv_general_dilated=conv.small_map_conv)``; the parameters keep
their full shape.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
from jax import lax
import jax.numpy as jnp

# Output positions (batch × pixels) up to which ``small_map_conv`` uses the patch matmul.
# The im2col buffer is positions · k² · C_in values: 8 · 15 · 256 at the 3×128×256 UResNet's
# deepest level, 160 · 25 · 256 (4 MB) at 3×640×1024.
SMALL_MAP_POSITIONS = 256
# Input channels up to which large-map convolutions take ``blocked_weight_gradient``
# (measured gain at 8–64 channels; 128 channels gained nothing at 3×128×256).
BLOCKED_WGRAD_MAX_CHANNELS = 64
# Output positions (batch × pixels) from which they do: on smaller maps XLA's weight gradient
# is cheap and the blocked loop only adds compile time (≈ 6 s of the SBND smoke run's 29 s).
BLOCKED_WGRAD_MIN_POSITIONS = 4096


def _is_plain_same(window_strides, padding, lhs_dilation, rhs_dilation, ndim) -> bool:
  ones = (1,) * (ndim - 2)
  return (isinstance(padding, str) and padding == "SAME"
          and tuple(window_strides) == ones and tuple(lhs_dilation or ones) == ones
          and tuple(rhs_dilation or ones) == ones)


def _crop(lhs_shape, rhs, dimension_numbers):
  """``rhs`` with, per spatial dim of size n, an odd kernel k > 2n − 1 cut to its central 2n − 1."""
  dn = lax.conv_dimension_numbers(lhs_shape, rhs.shape, dimension_numbers)
  for lhs_axis, rhs_axis in zip(dn.lhs_spec[2:], dn.rhs_spec[2:]):
    n, k = lhs_shape[lhs_axis], rhs.shape[rhs_axis]
    if k % 2 == 1 and k > 2 * n - 1:
      rhs = lax.slice_in_dim(rhs, k // 2 - (n - 1), k // 2 + n, axis=rhs_axis)
  return rhs


def cropped_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                 precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` (same signature); for stride-1, undilated SAME convolutions
  the kernel taps that can only meet padding are dropped first (exact; module docstring)."""
  if _is_plain_same(window_strides, padding, lhs_dilation, rhs_dilation, lhs.ndim):
    rhs = _crop(lhs.shape, rhs, dimension_numbers)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)


def _channels_last(lhs, rhs, dimension_numbers) -> bool:
  """True for the layout flax.linen.Conv passes: lhs [N, *S, C], rhs [*K, C, O], out [N, *S, O]."""
  n = lhs.ndim
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  spatial = tuple(range(1, n - 1))
  return (tuple(dn.lhs_spec) == (0, n - 1, *spatial)
          and tuple(dn.rhs_spec) == (n - 1, n - 2, *range(n - 2))
          and tuple(dn.out_spec) == (0, n - 1, *spatial))


def patch_matmul_conv(lhs, rhs, precision=None, preferred_element_type=None):
  """Stride-1 SAME convolution as im2col + one matmul; channels last.

  Args:
    lhs: [N, *S, C_in] feature map.
    rhs: [*K, C_in, C_out] kernel (odd or even K; SAME pads ⌊(K − 1)/2⌋ before, the rest
      after, as ``lax``).
    precision, preferred_element_type: as ``lax.dot_general``.

  Returns:
    [N, *S, C_out], equal to ``lax.conv_general_dilated(lhs, rhs, 1, "SAME")`` up to the
    summation order.
  """
  spatial, kernel = lhs.shape[1:-1], rhs.shape[:-2]
  channels = lhs.shape[-1]
  pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel] + [(0, 0)]
  padded = jnp.pad(lhs, pads)
  # Tap-major, then input channel: the row order of the HWIO kernel reshaped to 2D.
  patches = [lax.slice(padded, (0, *offset, 0), (lhs.shape[0], *(o + s for o, s in
                                                                 zip(offset, spatial)), channels))
             for offset in itertools.product(*(range(k) for k in kernel))]
  columns = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
  weights = rhs.reshape(math.prod(kernel) * channels, rhs.shape[-1])
  return lax.dot_general(columns, weights, (((columns.ndim - 1,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=preferred_element_type)


def blocked_weight_gradient(x, dy, kernel: int, block_bytes: int = 1 << 20):
  """Weight gradient of a stride-1 SAME convolution with an odd k×k kernel, by row blocks.

  Args:
    x: [N, H, W, C_in] input of the convolution.
    dy: [N, H, W, C_out] cotangent of its output.
    kernel: k (odd), pixels.
    block_bytes: target size of one block of im2col patches.

  Returns:
    [k, k, C_in, C_out] (HWIO) = Σ over positions of patch ⊗ dy, accumulated in float32 and
    cast to ``x.dtype``; equal to XLA's weight gradient up to the summation order.

  The orientation [C_out, positions] · [positions, k²·C_in] ran ~3× faster on XLA:CPU than
  its transpose (``scripts/profile_conv_wgrad.py``).
  """
  n, h, w, c = x.shape
  c_out, p, cols = dy.shape[-1], kernel // 2, kernel * kernel * c
  target = max(1, block_bytes // (n * w * cols * x.dtype.itemsize))
  rows = max(r for r in range(1, min(h, target) + 1) if h % r == 0)
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))

  def block(i):
    xs = lax.dynamic_slice_in_dim(padded, i * rows, rows + 2 * p, axis=1)
    ds = lax.dynamic_slice_in_dim(dy, i * rows, rows, axis=1).reshape(-1, c_out)
    patches = jnp.concatenate([xs[:, a:a + rows, b:b + w] for a in range(kernel)
                               for b in range(kernel)], axis=-1).reshape(-1, cols)
    return lax.dot_general(ds, patches, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)

  # The first block is the initial carry, so the carry has the data's type (under shard_map a
  # zeros carry would be device-invariant while the sums vary over the devices).
  g = lax.fori_loop(1, h // rows, lambda i, acc: acc + block(i), block(0))
  return g.T.reshape(kernel, kernel, c, c_out).astype(x.dtype)


def _same_nhwc(x, w, precision=None, preferred_element_type=None):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def blocked_wgrad_conv(x, w, precision=None, preferred_element_type=None):
  """Stride-1 SAME NHWC/HWIO convolution whose weight gradient is ``blocked_weight_gradient``
  (the forward and the input gradient are XLA's). x [N, H, W, C_in], w [k, k, C_in, C_out]."""
  return _same_nhwc(x, w, precision, preferred_element_type)


def _blocked_fwd(x, w, precision, preferred_element_type):
  return _same_nhwc(x, w, precision, preferred_element_type), (x, w)


def _blocked_bwd(precision, preferred_element_type, residuals, dy):
  x, w = residuals
  dx = jax.vjp(lambda x_: _same_nhwc(x_, w, precision, preferred_element_type), x)[1](dy)[0]
  dw = blocked_weight_gradient(x, dy.astype(x.dtype), w.shape[0]).astype(w.dtype)
  return dx, dw


blocked_wgrad_conv.defvjp(_blocked_fwd, _blocked_bwd)


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                   precision=None, preferred_element_type=None):
  """``cropped_conv`` (same signature); channels-last and ungrouped: on maps with at most
  ``SMALL_MAP_POSITIONS`` output positions a patch matmul instead of XLA's convolution, on
  maps with ≥ ``BLOCKED_WGRAD_MIN_POSITIONS`` positions, odd square kernels and
  ≤ ``BLOCKED_WGRAD_MAX_CHANNELS`` input channels ``blocked_wgrad_conv`` (module docstring)."""
  if (_is_plain_same(window_strides, padding, lhs_dilation, rhs_dilation, lhs.ndim)
      and feature_group_count == 1 and batch_group_count == 1
      and math.prod(lhs.shape[:-1]) <= SMALL_MAP_POSITIONS
      and math.prod(rhs.shape[:-2]) > 1
      and _channels_last(lhs, rhs, dimension_numbers)):
    return patch_matmul_conv(lhs, _crop(lhs.shape, rhs, dimension_numbers), precision,
                             preferred_element_type)
  if (_is_plain_same(window_strides, padding, lhs_dilation, rhs_dilation, lhs.ndim)
      and lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
      and rhs.shape[0] == rhs.shape[1] > 1 and rhs.shape[0] % 2 == 1
      and lhs.shape[1] >= rhs.shape[0] and lhs.shape[2] >= rhs.shape[1]
      and lhs.shape[-1] <= BLOCKED_WGRAD_MAX_CHANNELS
      and math.prod(lhs.shape[:-1]) >= BLOCKED_WGRAD_MIN_POSITIONS
      and _channels_last(lhs, rhs, dimension_numbers)):
    return blocked_wgrad_conv(lhs, rhs, precision, preferred_element_type)
  return cropped_conv(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                      feature_group_count=feature_group_count,
                      batch_group_count=batch_group_count, precision=precision,
                      preferred_element_type=preferred_element_type)
