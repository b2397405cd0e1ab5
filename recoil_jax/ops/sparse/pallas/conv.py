"""Output-stationary sparse convolution in Pallas: gather -> matmul -> accumulate, kernel-based VJP.

Layouts: features [N, C_in]; rulebooks in `KernelMap` form ([N_out, K] out_map, [N_in, K] in_map,
-1 = no pair), transposed to [K, N] here so that a program reads a contiguous run of rows for one
offset; kernel [K, C_in, C_out] (flat offsets in `kernel_map` order).

Forward: one program owns ``block_rows`` output rows and loops over the K offsets; for each it
gathers the input rows named by the map (a -1 reads an appended zero row) and accumulates
``X_gathered @ W_k`` in float32 registers; offsets with no pair in the block are skipped. Every output
row is written by exactly one program: no scatter, no atomics, deterministic.

Backward (`conv_features`' custom VJP), also kernel-based and atomic-free:

* dX = the same kernel run on dY through the transposed rulebook ``in_map`` with W_k^T
  (dX[n] = sum_k dY[in_map[n, k]] W_k^T): output-stationary over the inputs;
* dW_k = sum_o X[out_map[o, k]]^T dY[o]: a program per (offset k, row split s) accumulates
  gathered X^T dY over its share of the output-row blocks; the few split partials are summed in XLA
  (a fixed-order reduction, no atomics).

Dtypes: float32 or bfloat16 inputs (float64 in interpret mode for gradient checks), float32
accumulation (``preferred_element_type``), outputs in the input dtype. float32 products use
Precision.HIGHEST (IEEE fp32 in Triton, not TF32). Channel counts are padded to powers of two
>= 16 (Triton's dot needs >= 16); inputs with C_in <= `SMALL_CIN` (the first layer of the TPC net has
C_in = 1) use rank-1 updates instead of a mostly-zero dot.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from recoil_jax.ops.sparse.pallas import common
from recoil_jax.ops.sparse.pallas.common import FULL

BLOCK_ROWS = 64  # output rows per program
SMALL_CIN = 4  # C_in up to this uses rank-1 updates instead of tl.dot
TARGET_PROGRAMS = 256  # weight-gradient programs to aim for (about 2 per SM of an H100/H200)


def _padded_channels(c: int) -> int:
  return common.next_pow2(c, common.MIN_DOT)


def _pad_table(x: jax.Array, channels: int) -> jax.Array:
  """[N, C] -> [N + 1, channels]: zero channels and one zero row at index N (the -1 target)."""
  return jnp.pad(x, ((0, 1), (0, channels - x.shape[1])))


# ---------------------------------------------------------------------------------------------------
# Kernels.

def _gather_matmul_kernel(map_ref, x_ref, w_ref, o_ref, *, bo: int, k_total: int, zero_row: int,
                          small_cin: int, acc_dtype, precision):
  rows = pl.ds(pl.program_id(0) * bo, bo)

  def offset(k, acc):
    idx = map_ref[k, rows]
    has = idx >= 0

    def accumulate(acc):
      src = jnp.where(has, idx, zero_row)
      if small_cin:
        for c in range(small_cin):
          col = x_ref[src, c].astype(acc_dtype)
          acc = acc + col[:, None] * w_ref[k, c, :].astype(acc_dtype)[None, :]
        return acc
      return acc + jnp.dot(x_ref[src, :], w_ref[k], precision=precision,
                           preferred_element_type=acc_dtype)

    return lax.cond(common.any_true(has), accumulate, lambda a: a, acc)

  acc = lax.fori_loop(0, k_total, offset, jnp.zeros(o_ref.shape, acc_dtype))
  o_ref[...] = acc.astype(o_ref.dtype)


def _weight_grad_kernel(map_ref, x_ref, dy_ref, dw_ref, *, bo: int, n_blocks: int, splits: int,
                        zero_row: int, acc_dtype, precision):
  k = pl.program_id(0)
  split = pl.program_id(1)

  def block(it, acc):
    blk = split + it * splits
    in_range = blk < n_blocks
    rows = pl.ds(jnp.minimum(blk, n_blocks - 1) * bo, bo)
    idx = map_ref[k, rows]
    has = (idx >= 0) & in_range

    def accumulate(acc):
      xg = x_ref[jnp.where(has, idx, zero_row), :]
      dy = dy_ref[rows, :]
      return acc + lax.dot_general(xg, dy, (((0,), (0,)), ((), ())), precision=precision,
                                   preferred_element_type=acc_dtype)

    return lax.cond(common.any_true(has), accumulate, lambda a: a, acc)

  n_iter = -(-n_blocks // splits)
  dw_ref[...] = lax.fori_loop(0, n_iter, block, jnp.zeros(dw_ref.shape, acc_dtype))


# ---------------------------------------------------------------------------------------------------
# Wrappers.

def gather_matmul(features: jax.Array, map_t: jax.Array, kernel: jax.Array, *,
                  interpret: bool = False, block_rows: int = BLOCK_ROWS) -> jax.Array:
  """out[o] = sum_k features[map_t[k, o]] @ kernel[k] (entries -1 contribute nothing).

  Args:
    features: [N_x, C_in] float.
    map_t: [K, N_out] int32 transposed rulebook.
    kernel: [K, C_in, C_out] float.
    interpret: run the Pallas interpreter.
    block_rows: output rows per program (power of two).

  Returns:
    [N_out, C_out] in the promoted input dtype (float32 accumulation).
  """
  k, n_out = map_t.shape
  if features.ndim != 2 or kernel.shape[:2] != (k, features.shape[1]):
    raise ValueError(f"gather_matmul: features {features.shape}, map_t {map_t.shape} and kernel "
                     f"{kernel.shape} do not fit [N, C_in], [K, N_out], [K, C_in, C_out]")
  return _gather_matmul(features, map_t, kernel, bool(interpret), int(block_rows))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _gather_matmul(features, map_t, kernel, interpret, bo):
  k, n_out = map_t.shape
  n_x, c_in = features.shape
  c_out = kernel.shape[-1]
  dtype = jnp.result_type(features.dtype, kernel.dtype)
  cip, cop = _padded_channels(c_in), _padded_channels(c_out)
  kp = common.offset_bucket(k)
  x = _pad_table(features.astype(dtype), cip)
  w = jnp.pad(kernel.astype(dtype), ((0, kp - k), (0, cip - c_in), (0, cop - c_out)))
  n_pad = common.round_up(max(n_out, 1), bo)
  m = jnp.pad(map_t.astype(jnp.int32), ((0, kp - k), (0, n_pad - n_out)), constant_values=-1)
  body = functools.partial(_gather_matmul_kernel, bo=bo, k_total=kp, zero_row=n_x,
                           small_cin=c_in if c_in <= SMALL_CIN else 0,
                           acc_dtype=common.acc_dtype(dtype), precision=common.dot_precision(dtype))
  out = common.call(body, out_shape=jax.ShapeDtypeStruct((n_pad, cop), dtype), grid=(n_pad // bo,),
                    in_specs=[FULL, FULL, FULL], out_specs=common.row_block(bo, cop),
                    interpret=interpret, name="sparse_conv_gather_matmul")(m, x, w)
  return out[:n_out, :c_out]


def weight_grad(features: jax.Array, map_t: jax.Array, grad_out: jax.Array, *,
                interpret: bool = False, block_rows: int = BLOCK_ROWS) -> jax.Array:
  """dW[k] = sum_o features[map_t[k, o]]^T grad_out[o]  -> [K, C_in, C_out] (float32 accumulation).

  Args:
    features: [N_x, C_in].
    map_t: [K, N_out] int32 transposed out_map.
    grad_out: [N_out, C_out].
  """
  if map_t.shape[1] != grad_out.shape[0]:
    raise ValueError(f"weight_grad: map_t {map_t.shape} and grad_out {grad_out.shape} disagree on N_out")
  return _weight_grad(features, map_t, grad_out, bool(interpret), int(block_rows))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _weight_grad(features, map_t, grad_out, interpret, bo):
  k, n_out = map_t.shape
  n_x, c_in = features.shape
  c_out = grad_out.shape[1]
  dtype = jnp.result_type(features.dtype, grad_out.dtype)
  acc = common.acc_dtype(dtype)
  cip, cop = _padded_channels(c_in), _padded_channels(c_out)
  x = _pad_table(features.astype(dtype), cip)
  n_pad = common.round_up(max(n_out, 1), bo)
  dy = jnp.pad(grad_out.astype(dtype), ((0, n_pad - n_out), (0, cop - c_out)))
  kp = common.offset_bucket(k)
  m = jnp.pad(map_t.astype(jnp.int32), ((0, kp - k), (0, n_pad - n_out)), constant_values=-1)
  n_blocks = n_pad // bo
  splits = max(1, min(n_blocks, -(-TARGET_PROGRAMS // kp)))
  body = functools.partial(_weight_grad_kernel, bo=bo, n_blocks=n_blocks, splits=splits,
                           zero_row=n_x, acc_dtype=acc, precision=common.dot_precision(dtype))
  partial = common.call(
      body, out_shape=jax.ShapeDtypeStruct((kp, splits, cip, cop), acc), grid=(kp, splits),
      in_specs=[FULL, FULL, FULL],
      out_specs=pl.BlockSpec((pl.squeezed, pl.squeezed, cip, cop), lambda i, j: (i, j, 0, 0)),
      interpret=interpret, name="sparse_conv_weight_grad")(m, x, dy)
  return partial.sum(axis=1)[:k, :c_in, :c_out]


# ---------------------------------------------------------------------------------------------------
# Differentiable op.

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def conv_features(features: jax.Array, kernel: jax.Array, out_map: jax.Array,
                  in_map: jax.Array, interpret: bool = False) -> jax.Array:
  """Sparse conv arithmetic out[o] = sum_k kernel[k]^T features[out_map[o, k]] with a Pallas VJP.

  Args:
    features: [N_in, C_in] float32 / bfloat16.
    kernel: [K, C_in, C_out].
    out_map: [N_out, K] int32 rulebook (-1 = none).
    in_map: [N_in, K] int32 transposed rulebook (describes the same pairs as ``out_map``).
    interpret: run the Pallas interpreter (static).

  Returns:
    [N_out, C_out] (bias not included; rows without pairs are 0).
  """
  return gather_matmul(features, out_map.T, kernel, interpret=interpret)


def _conv_fwd(features, kernel, out_map, in_map, interpret):
  map_t = out_map.T
  return gather_matmul(features, map_t, kernel, interpret=interpret), (features, kernel, map_t, in_map)


def _conv_bwd(interpret, res, grad_out):
  features, kernel, map_t, in_map = res
  dx = gather_matmul(grad_out, in_map.T, jnp.swapaxes(kernel, 1, 2), interpret=interpret)
  dw = weight_grad(features, map_t, grad_out, interpret=interpret)
  return (common.match_varying(dx.astype(features.dtype), features),
          common.match_varying(dw.astype(kernel.dtype), kernel), None, None)


conv_features.defvjp(_conv_fwd, _conv_bwd)
