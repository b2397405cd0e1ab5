"""Small helpers shared by the Pallas sparse kernels (shapes, padding, launch parameters).

Every array a kernel loads or computes has a power-of-two size (a requirement of the Pallas Triton
lowering), so wrappers pad rows, channels and offset blocks; full arrays that are only indexed into
(feature tables, hash tables, rulebooks) can have any shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from recoil_jax.ops.varying import match_varying, varying_axes  # noqa: F401 (re-exported)

INT32_MAX = int(np.iinfo(np.int32).max)
# Triton's tl.dot needs every matmul dimension >= 16.
MIN_DOT = 16


def next_pow2(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  n = max(int(n), int(minimum), 1)
  return 1 << (n - 1).bit_length()


def round_up(n: int, m: int) -> int:
  return -(-int(n) // int(m)) * int(m)


def offset_bucket(k: int, block: int = 32) -> int:
  """Padded number of kernel offsets: the next power of two up to ``block``, then multiples of it.

  Padded offsets have -1 maps (and zero weights) and are skipped at run time; bucketing keeps the
  number of distinct compiled kernels small (what costs time in interpret mode).
  """
  k = max(int(k), 1)
  return next_pow2(k) if k <= block else round_up(k, block)


def pad_axis(x: jax.Array, size: int, axis: int = 0, value=0) -> jax.Array:
  """Pads ``x`` along ``axis`` to ``size`` with ``value`` (no-op when already that size)."""
  extra = size - x.shape[axis]
  if extra < 0:
    raise ValueError(f"pad_axis: cannot pad axis {axis} of shape {x.shape} down to {size}")
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def any_true(x: jax.Array) -> jax.Array:
  """``jnp.any`` for kernels: the Triton lowering has no reduce_or, so reduce an int32 max."""
  return jnp.max(x.astype(jnp.int32)) > 0


def acc_dtype(dtype) -> jnp.dtype:
  """Accumulator dtype: float32 for 16/32-bit floats, float64 for float64 (interpret-mode tests)."""
  return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def dot_precision(dtype):
  """fp32 inputs use IEEE fp32 products (Precision.HIGHEST; Triton's default would be TF32)."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) in (jnp.float32, jnp.float64) else None


def call(kernel, *, out_shape, grid, in_specs, out_specs, interpret: bool, name: str,
         num_warps: int = 4, input_output_aliases=None):
  """`pl.pallas_call` with Triton compiler parameters (Triton backend on GPU, interpreter on CPU).

  Works under ``jax.shard_map`` with ``check_vma=True`` (the trainer's data-parallel step): the
  outputs are typed as varying over every mesh axis any operand varies over, and the operands
  are cast to that type (a no-op outside shard_map).
  """
  aliases = dict(input_output_aliases or {})

  def run(*args):
    varying = frozenset().union(*(varying_axes(a) for a in args))
    if varying:
      args = tuple(_make_varying(a, varying) for a in args)
    shapes = jax.tree_util.tree_map(lambda s: _with_varying(s, varying), out_shape)
    return pl.pallas_call(
        kernel, out_shape=shapes, grid=grid, in_specs=in_specs, out_specs=out_specs,
        input_output_aliases=aliases, interpret=bool(interpret), name=name,
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps))(*args)

  return run


def _make_varying(x, axes: frozenset):
  missing = tuple(sorted(axes - varying_axes(x)))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def _with_varying(s: jax.ShapeDtypeStruct, axes: frozenset) -> jax.ShapeDtypeStruct:
  if not axes:
    return s
  mat_type = type(jax.typeof(jnp.zeros(())).manual_axis_type)
  return jax.ShapeDtypeStruct(s.shape, s.dtype, manual_axis_type=mat_type(varying=axes))


FULL = pl.no_block_spec  # the whole array, indexed freely inside the kernel


def row_block(rows: int, cols: int | None = None) -> pl.BlockSpec:
  """BlockSpec of ``rows`` consecutive rows (and ``cols`` leading columns) per program (grid axis 0)."""
  if cols is None:
    return pl.BlockSpec((rows,), lambda i, *_: (i,))
  return pl.BlockSpec((rows, cols), lambda i, *_: (i, 0))


def on_gpu() -> bool:
  """True when the default JAX backend is a GPU (CUDA or ROCm)."""
  return jax.default_backend() == "gpu"
