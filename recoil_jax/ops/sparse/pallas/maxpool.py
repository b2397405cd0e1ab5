"""spconv sparse max pooling in Pallas: output-stationary gather-max with a kernel-based VJP.

out[o, c] = max(0, max_k x[out_map[o, k], c]) (spconv initialises the max with 0; -1 entries read
nothing). The forward kernel also records, per (output row, channel), the input row that won
(``argmax``, -1 when the 0 initialiser won). Ties go to the first offset in `kernel_map` order, and
an input must be strictly larger than the running maximum, so an input equal to 0 never beats the
initialiser.

Backward, atomic-free: a program owns a block of *input* rows and loops over the offsets of the
transposed rulebook ``in_map``; input n receives dY[o, c] from every output o = in_map[n, k] whose
recorded winner for channel c is n. (The XLA reference differentiates ``jnp.maximum``, which splits
the gradient equally between exact ties; ties have measure zero for continuous inputs, and the ones
that do occur in a network -- inputs exactly 0 after a ReLU -- receive no gradient through the ReLU
in either implementation.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from recoil_jax.ops.sparse.pallas import common
from recoil_jax.ops.sparse.pallas.common import FULL

BLOCK_ROWS = 64


def _max_kernel(map_ref, x_ref, out_ref, arg_ref, *, bo: int, k_total: int, zero_row: int):
  rows = pl.ds(pl.program_id(0) * bo, bo)

  def offset(k, carry):
    idx = map_ref[k, rows]
    has = idx >= 0

    def update(carry):
      best, arg = carry
      xg = x_ref[jnp.where(has, idx, zero_row), :]
      better = has[:, None] & (xg > best)
      return jnp.where(better, xg, best), jnp.where(better, idx[:, None], arg)

    return lax.cond(common.any_true(has), update, lambda c: c, carry)

  init = (jnp.zeros(out_ref.shape, out_ref.dtype), jnp.full(arg_ref.shape, -1, jnp.int32))
  best, arg = lax.fori_loop(0, k_total, offset, init)
  out_ref[...] = best
  arg_ref[...] = arg


def _max_grad_kernel(map_ref, dy_ref, arg_ref, dx_ref, *, bi: int, k_total: int, zero_row: int,
                     acc_dtype):
  start = pl.program_id(0) * bi
  rows = pl.ds(start, bi)
  me = start + lax.broadcasted_iota(jnp.int32, (bi,), 0)

  def offset(k, acc):
    o = map_ref[k, rows]
    has = o >= 0

    def accumulate(acc):
      src = jnp.where(has, o, zero_row)
      won = has[:, None] & (arg_ref[src, :] == me[:, None])
      return acc + jnp.where(won, dy_ref[src, :].astype(acc_dtype), 0)

    return lax.cond(common.any_true(has), accumulate, lambda a: a, acc)

  acc = lax.fori_loop(0, k_total, offset, jnp.zeros(dx_ref.shape, acc_dtype))
  dx_ref[...] = acc.astype(dx_ref.dtype)


def gather_max(features: jax.Array, map_t: jax.Array, *, interpret: bool = False,
               block_rows: int = BLOCK_ROWS) -> tuple[jax.Array, jax.Array]:
  """Max pooling arithmetic.

  Args:
    features: [N_in, C].
    map_t: [K, N_out] int32 transposed out_map.
    interpret: run the Pallas interpreter.

  Returns:
    out [N_out, C] = max(0, max over the mapped inputs) and argmax [N_out, C] int32 (input row, or -1).
  """
  return _gather_max(features, map_t, bool(interpret), int(block_rows))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _gather_max(features, map_t, interpret, bo):
  k, n_out = map_t.shape
  n_in, c = features.shape
  cp = common.next_pow2(c)
  x = jnp.pad(features, ((0, 1), (0, cp - c)))
  n_pad = common.round_up(max(n_out, 1), bo)
  kp = common.offset_bucket(k)
  m = jnp.pad(map_t.astype(jnp.int32), ((0, kp - k), (0, n_pad - n_out)), constant_values=-1)
  out, arg = common.call(
      functools.partial(_max_kernel, bo=bo, k_total=kp, zero_row=n_in),
      out_shape=(jax.ShapeDtypeStruct((n_pad, cp), features.dtype),
                 jax.ShapeDtypeStruct((n_pad, cp), jnp.int32)),
      grid=(n_pad // bo,), in_specs=[FULL, FULL],
      out_specs=(common.row_block(bo, cp), common.row_block(bo, cp)),
      interpret=interpret, name="sparse_max_pool")(m, x)
  return out[:n_out, :c], arg[:n_out, :c]


def max_pool_grad(grad_out: jax.Array, argmax: jax.Array, in_map_t: jax.Array, *,
                  interpret: bool = False, block_rows: int = BLOCK_ROWS) -> jax.Array:
  """dX[n, c] = sum over k of grad_out[o, c] for o = in_map_t[k, n] with argmax[o, c] == n.

  Args:
    grad_out: [N_out, C].
    argmax: [N_out, C] int32 from `gather_max`.
    in_map_t: [K, N_in] int32 transposed in_map.

  Returns:
    [N_in, C] in grad_out's dtype (float32 accumulation).
  """
  return _max_pool_grad(grad_out, argmax, in_map_t, bool(interpret), int(block_rows))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _max_pool_grad(grad_out, argmax, in_map_t, interpret, bi):
  k, n_in = in_map_t.shape
  n_out, c = grad_out.shape
  cp = common.next_pow2(c)
  dy = jnp.pad(grad_out, ((0, 1), (0, cp - c)))
  arg = jnp.pad(argmax, ((0, 1), (0, cp - c)), constant_values=-1)
  n_pad = common.round_up(max(n_in, 1), bi)
  kp = common.offset_bucket(k)
  m = jnp.pad(in_map_t.astype(jnp.int32), ((0, kp - k), (0, n_pad - n_in)), constant_values=-1)
  dx = common.call(
      functools.partial(_max_grad_kernel, bi=bi, k_total=kp, zero_row=n_out,
                        acc_dtype=common.acc_dtype(grad_out.dtype)),
      out_shape=jax.ShapeDtypeStruct((n_pad, cp), grad_out.dtype), grid=(n_pad // bi,),
      in_specs=[FULL, FULL, FULL], out_specs=common.row_block(bi, cp),
      interpret=interpret, name="sparse_max_pool_grad")(m, dy, arg)
  return dx[:n_in, :c]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def max_pool_features(features: jax.Array, out_map: jax.Array, in_map: jax.Array,
                      interpret: bool = False) -> jax.Array:
  """spconv max pooling through a rulebook, differentiable in ``features`` (Pallas VJP).

  Args:
    features: [N_in, C].
    out_map: [N_out, K] int32; in_map: [N_in, K] int32 (same pairs, transposed).
    interpret: run the Pallas interpreter (static).

  Returns:
    [N_out, C].
  """
  return gather_max(features, out_map.T, interpret=interpret)[0]


def _pool_fwd(features, out_map, in_map, interpret):
  out, arg = gather_max(features, out_map.T, interpret=interpret)
  return out, (arg, in_map, features[:0])  # an empty slice: the cotangent's dtype and shard_map type


def _pool_bwd(interpret, res, grad_out):
  arg, in_map, like = res
  dx = max_pool_grad(grad_out, arg, in_map.T, interpret=interpret)
  return common.match_varying(dx.astype(like.dtype), like), None, None


max_pool_features.defvjp(_pool_fwd, _pool_bwd)
