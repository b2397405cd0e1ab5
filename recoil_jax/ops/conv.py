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

Everywhere else both are exactly ``lax.conv_general_dilated``.

Use: ``flax.linen.Conv(..., conv_general_dilated=conv.small_map_conv)``; the parameters keep
their full shape.
"""

from __future__ import annotations

import itertools
import math

from jax import lax
import jax.numpy as jnp

# Output positions (batch × pixels) up to which ``small_map_conv`` uses the patch matmul.
# The im2col buffer is positions · k² · C_in values: 8 · 15 · 256 at the 3×128×256 UResNet's
# deepest level, 160 · 25 · 256 (4 MB) at 3×640×1024.
SMALL_MAP_POSITIONS = 256


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


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                   precision=None, preferred_element_type=None):
  """``cropped_conv`` (same signature), and on maps with at most ``SMALL_MAP_POSITIONS``
  output positions (channels-last, ungrouped) a patch matmul instead of XLA's convolution."""
  if (_is_plain_same(window_strides, padding, lhs_dilation, rhs_dilation, lhs.ndim)
      and feature_group_count == 1 and batch_group_count == 1
      and math.prod(lhs.shape[:-1]) <= SMALL_MAP_POSITIONS
      and math.prod(rhs.shape[:-2]) > 1
      and _channels_last(lhs, rhs, dimension_numbers)):
    return patch_matmul_conv(lhs, _crop(lhs.shape, rhs, dimension_numbers), precision,
                             preferred_element_type)
  return cropped_conv(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                      feature_group_count=feature_group_count,
                      batch_group_count=batch_group_count, precision=precision,
                      preferred_element_type=preferred_element_type)
