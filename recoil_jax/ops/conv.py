"""2D convolution that drops the kernel taps a SAME convolution can only apply to padding.

On a feature map smaller than the kernel (the UResNet's deepest level: 5×5 kernels on a 2×4
map at 3×128×256), the taps more than n − 1 rows or columns from the centre only ever meet
the zero padding. ``cropped_conv`` slices them off before calling ``lax.conv_general_dilated``:
the output and the input gradient are unchanged and the kernel gradient of the dropped taps is
zero either way (their inputs are zeros), so the result is exact, and the convolution, its
input gradient (which reverses the kernel) and its weight gradient work on the smaller kernel.
Everywhere else it is exactly ``lax.conv_general_dilated``.

Use: ``flax.linen.Conv(..., conv_general_dilated=conv.cropped_conv)``; the parameters keep
their full shape.
"""

from __future__ import annotations

from jax import lax


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
  ones = (1,) * (lhs.ndim - 2)
  if (padding == "SAME" and tuple(window_strides) == ones
      and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones):
    rhs = _crop(lhs.shape, rhs, dimension_numbers)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
