"""Pure-XLA reference sparse convolution and max pooling (the CPU path and the oracle for later kernels).

Shapes: features [N, C] (rows of a `SparseTensor`), kernels [K0, K1, K2, C_in, C_out] (like ``nn.Conv``),
flattened here to [K, C_in, C_out] with K = K0*K1*K2 in the order of `kernel_map`.

The rulebook (`kernel_map`) and the arithmetic are separate functions so that a later backend can swap
either. Three equivalent ways to evaluate out[o] = sum_k W_k^T x[map(o, k)]:

* ``"gather_first"``: gather [rows, K, C_in] for a block of output rows, then one matmul with
  [K*C_in, C_out] (output-stationary, no scatter); blocks of inactive rows (the unused tail of the
  capacity) are skipped. Best when C_in is small (first layer). When even ``MIN_BLOCK_ROWS`` rows
  with all offsets exceed the chunk bound, it steps over chunks of G offsets for all rows instead.
* ``"matmul_gather"``: Y = x @ W_chunk on the inputs, then gather [N_out, G, C_out] and sum
  (output-stationary). Best when C_out < C_in and N_out is small.
* ``"matmul_scatter"``: Y = x @ W on a block of input rows (all offsets at once), then scatter-add
  into the outputs through the input-stationary map (stride-1 convs). Moves N_in*K*C_out numbers
  instead of N_out*K*C_in, and skips blocks of inactive rows (the unused tail of the capacity).

All loop with `lax.scan` (bodies rematerialised under autodiff) so that at most ``max_chunk_elements``
gathered or scattered numbers are alive: the gathers over chunks of offsets, each step slicing its
columns of the map (no transposed copy), the scatter over blocks of rows, adding in place into its
accumulator. ``"auto"`` picks the cheapest by a static cost model. Gathers and scatters call `lax.gather` / `lax.scatter_add`
with in-bounds indices (rows marked -1 read a zero padding row, or add into a spare accumulator row):
jnp indexing would add a select per index for negative-index wrapping, also in the backward pass.
Gradients come from JAX autodiff; inactive rows neither contribute nor receive gradient.

Strided convolutions whose kernel is a multiple of the stride (dilation 1; e.g. the k6/s2 first layer
of the TPC paper's trunk, arXiv 2403.15949) run as a space-to-depth regrouping followed by a stride-1
convolution on the coarse grid: the s0*s1*s2 voxels of a coarse cell become channels, and kernel offset
k = j*s + r becomes coarse offset j with channel block r. Same sites, same sums (in another order), but the rulebook has prod(K/s) columns
instead of prod(K) (27 instead of 216 for k6/s2) and the gathers move contiguous rows of s^3*C_in numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recoil_jax.ops import varying
from recoil_jax.ops.sparse import kernel_map as km
from recoil_jax.ops.sparse.tensor import CapacityOverflowError, SparseTensor, is_concrete

COMPUTES = ("auto", "gather_first", "matmul_gather", "matmul_scatter")
DEFAULT_CHUNK_ELEMENTS = 1 << 23  # 8 Mi numbers (32 MiB in float32) per gathered chunk
MIN_BLOCK_ROWS = 32  # matmul_scatter: below this many rows per block, chunk the offsets instead
# matmul_scatter: numbers of a block's [rows, K*C_out] products (8 MiB in float32): small enough to
# stay in cache between the matmul that writes them and the scatter that reads them (2-8 MiB
# blocks: 1.6-1.9x faster forwards than 32 MiB ones on the paper trunk's k4 and k3 convs, one
# core), large enough for XLA to split each block's matmuls over two cores (8 MiB: forward and
# backward 10-20 % faster than 2 MiB on two cores, alike on one).
SCATTER_BLOCK_ELEMENTS = 1 << 21
GATHER_FIRST_OFFSETS = 8  # gather_first over offset chunks: offsets per step at most
# gather_first over row blocks: gathered numbers per block (1 MiB in float32, cache-sized).
GATHER_FIRST_BLOCK_ELEMENTS = 1 << 18
# max pooling: gathered numbers [rows, K + 1, C] reduced at once (64 MiB in float32; the TPC
# trunk's pools at batch 64 need 11 M and 6.6 M, one block each).
POOL_BLOCK_ELEMENTS = 1 << 24


def _chunking(k: int, per_offset: int, max_chunk_elements: int) -> tuple[int, int]:
  """(offsets per chunk G, number of chunks) so that G * per_offset <= max_chunk_elements (G >= 1)."""
  g = max(1, min(k, max_chunk_elements // max(per_offset, 1)))
  n = math.ceil(k / g)
  g = math.ceil(k / n)  # balance chunks
  return g, n


def _pad_offsets(index_map: jax.Array, kernel: jax.Array, g: int, n: int, missing: int):
  """Pads the offset axis to n*g (``missing`` map columns, zero weights); maps -1 to ``missing``.

  Returns the map [rows, n*g] (chunk i = columns [i*g, (i+1)*g), sliced by each step: measured
  cheaper than one transposed copy into [n, rows, g]) and the kernel [n*g, C_in, C_out].
  """
  index_map = jnp.where(index_map < 0, missing, index_map)
  pad = n * g - index_map.shape[1]
  if pad:
    index_map = jnp.pad(index_map, ((0, 0), (0, pad)), constant_values=missing)
    kernel = jnp.pad(kernel, ((0, pad), (0, 0), (0, 0)))
  return index_map, kernel


def _take_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[idx] for x [R, C] and int32 indices known to lie in [0, R): [..., C].

  `lax.gather` directly: jnp indexing adds a negative-index wrap (a select per index).
  """
  dn = lax.GatherDimensionNumbers(offset_dims=(idx.ndim,), collapsed_slice_dims=(0,),
                                  start_index_map=(0,))
  return lax.gather(x, idx[..., None], dn, (1, x.shape[1]),
                    mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _add_rows(acc: jax.Array, idx: jax.Array, y: jax.Array) -> jax.Array:
  """acc[idx[m]] += y[m] for acc [R, C], idx [M] int32 known to lie in [0, R), y [M, C].

  `lax.scatter_add` directly, with [M, 1, C] update windows (XLA's canonical scatter form): jnp's
  ``.at[].add`` wraps negative indices, and the [M, C] form makes XLA's CPU layout assignment copy
  all the updates once more (measured ~1.5x slower). In-bounds indices make the transpose (the
  backward pass) a plain gather, without a select per index.
  """
  dn = lax.ScatterDimensionNumbers(update_window_dims=(1, 2), inserted_window_dims=(),
                                   scatter_dims_to_operand_dims=(0,))
  return lax.scatter_add(acc, idx[:, None], y[:, None, :], dn,
                         mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _chunk(index_map: jax.Array, i: jax.Array, g: int) -> jax.Array:
  """Columns [i*g, (i+1)*g) of a padded map ([rows, g])."""
  return lax.dynamic_slice_in_dim(index_map, i * g, g, axis=1)


def _fold(body, init, n: int):
  """acc = body(... body(body(init, 0), 1) ..., n - 1) with the chunk index as a traced int32.

  The first chunk is applied outside the scan so that the carry takes the type of the
  body's output: inside ``shard_map`` the features are device-varying while a fresh
  ``jnp.zeros`` init is not, and ``lax.scan`` requires equal carry types. The scanned body
  is rematerialised under autodiff (`jax.checkpoint`), so a chunk's gathered numbers are
  never all stored at once.
  """
  acc = body(init, jnp.int32(0))
  if n == 1:
    return acc
  step = jax.checkpoint(body)
  return lax.scan(lambda a, i: (step(a, i), None), acc, jnp.arange(1, n, dtype=jnp.int32))[0]


@functools.partial(jax.jit, static_argnames=("order", "max_chunk_elements"))
def gather_matmul(features: jax.Array, out_map: jax.Array, kernel: jax.Array, *,
                  order: str = "gather_first",
                  max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> jax.Array:
  """Output-stationary sparse conv arithmetic.

  Args:
    features: [N_in, C_in].
    out_map: [N_out, K] int32 input row per (output, offset), -1 = none.
    kernel: [K, C_in, C_out].
    order: "gather_first" or "matmul_gather" (see module docstring).
    max_chunk_elements: bound on the numbers gathered per scan step.

  Returns:
    [N_out, C_out] (rows with no input are 0; bias not included).
  """
  n_in, c_in = features.shape
  n_out, k = out_map.shape
  c_out = kernel.shape[-1]
  dtype = jnp.result_type(features.dtype, kernel.dtype)
  x = jnp.concatenate([features.astype(dtype), jnp.zeros((1, c_in), dtype)], 0)  # row n_in = 0
  kernel = kernel.astype(dtype)
  if order == "gather_first":
    rows = min(n_out, min(GATHER_FIRST_BLOCK_ELEMENTS, max_chunk_elements) // max(k * c_in, 1))
    if rows >= MIN_BLOCK_ROWS and n_out > rows:
      return _gather_first_row_blocks(x, out_map, kernel, rows)
    # At most GATHER_FIRST_OFFSETS offsets per step even when more would fit: wider gathers were
    # measured up to 2x slower on this CPU (k6/s2 at batch 8: 27 offsets in one step vs 4 of 7).
    g, n = _chunking(k, max(n_out * c_in, -(-max_chunk_elements // GATHER_FIRST_OFFSETS)),
                     max_chunk_elements)
    maps, w = _pad_offsets(out_map, kernel, g, n, n_in)
    w = w.reshape(n, g * c_in, c_out)

    def body(acc, i):
      gathered = _take_rows(x, _chunk(maps, i, g))  # [N_out, g, C_in]
      return acc + gathered.reshape(n_out, g * c_in) @ w[i]

  elif order == "matmul_gather":
    g, n = _chunking(k, n_out * c_out, max_chunk_elements)
    maps, w = _pad_offsets(out_map, kernel, g, n, n_in)
    w = w.reshape(n, g, c_in, c_out).transpose(0, 2, 1, 3).reshape(n, c_in, g * c_out)

    def body(acc, i):
      y = (x @ w[i]).reshape((n_in + 1) * g, c_out)  # row r*g + t: input r through offset t
      flat = _chunk(maps, i, g) * g + jnp.arange(g, dtype=jnp.int32)
      return acc + _take_rows(y, flat).sum(1)

  else:
    raise ValueError(f"gather_matmul: order must be 'gather_first' or 'matmul_gather', got {order!r}")
  return _fold(body, jnp.zeros((n_out, c_out), dtype), n)


def _row_blocks(n: int, target: int) -> tuple[int, int]:
  """(rows per block, padding rows) for blocks of about ``target`` rows over ``n`` rows.

  A divisor of ``n`` in [target/2, target] when there is one (capacities are multiples of the batch
  size, so there usually is): no padded copy of the map and the features is made (a fresh
  multi-MB buffer costs more than the blocks' work on this CPU). Otherwise balanced blocks with
  the last one padded.
  """
  for rows in range(target, (target + 1) // 2 - 1, -1):
    if n % rows == 0:
      return rows, 0
  rows = math.ceil(n / math.ceil(n / target))
  return rows, math.ceil(n / rows) * rows - n


def _gather_first_row_blocks(x: jax.Array, out_map: jax.Array, kernel: jax.Array,
                             rows: int) -> jax.Array:
  """`gather_matmul`'s gather_first over blocks of ``rows`` output rows, all offsets per block.

  x: [N_in + 1, C_in] (row N_in = 0), out_map: [N_out, K], kernel: [K, C_in, C_out] (x's dtype).
  Each block gathers [rows, K*C_in] (a few MB, cache-sized) and multiplies it by the whole
  [K*C_in, C_out] kernel; a block whose map entries are all -1 (the inactive tail of the output
  capacity) is skipped with `lax.cond`, so the cost follows the active sites, not the capacity.
  The body is rematerialised under autodiff, so no gathered block is stored for the backward
  pass.
  """
  n_in = x.shape[0] - 1
  n_out, k = out_map.shape
  c_in, c_out = kernel.shape[1:]
  rows, pad = _row_blocks(n_out, rows)
  maps = jnp.pad(out_map, ((0, pad), (0, 0)), constant_values=-1) if pad else out_map
  w = kernel.reshape(k * c_in, c_out)

  def block_out(block):  # [rows, K] map rows (-1 = none) -> [rows, C_out]
    y = lambda: _take_rows(x, jnp.where(block < 0, n_in, block)).reshape(rows, k * c_in) @ w  # noqa: E731
    # zeros_like keeps x's shard_map type (cond wants both branches typed alike).
    return lax.cond(jnp.any(block >= 0), y, lambda: jnp.zeros_like(x, shape=(rows, c_out)))

  step = jax.checkpoint(block_out)
  ys = lax.map(step, maps.reshape(-1, rows, k))
  return ys.reshape(-1, c_out)[:n_out]


@functools.partial(jax.jit, static_argnames=("num_out", "max_chunk_elements"))
def matmul_scatter(features: jax.Array, in_map: jax.Array, kernel: jax.Array, num_out: int, *,
                   max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> jax.Array:
  """Input-stationary sparse conv arithmetic: out = segment_sum over (n, k) of x[n] @ W_k.

  Steps over blocks of input rows with all K offsets at once (one [rows, C_in] x [C_in, K*C_out]
  matmul, one scatter-add; at most ``SCATTER_BLOCK_ELEMENTS`` products per block, so they stay in
  cache); a block whose map entries are all -1 (inactive rows: the tail of a tensor's capacity) is
  skipped with `lax.cond`. Its gradient is a custom VJP over the same blocks (see
  `_scatter_blocks`; reverse mode only). When even ``MIN_BLOCK_ROWS`` rows with all offsets exceed
  ``max_chunk_elements``, it steps over chunks of offsets for all rows instead (plain autodiff).

  Args:
    features: [N_in, C_in].
    in_map: [N_in, K] int32 output row per (input, offset), -1 = none.
    kernel: [K, C_in, C_out].
    num_out: N_out (static).
    max_chunk_elements: bound on the numbers scattered per step.

  Returns:
    [N_out, C_out].
  """
  n_in, c_in = features.shape
  k = in_map.shape[1]
  c_out = kernel.shape[-1]
  dtype = jnp.result_type(features.dtype, kernel.dtype)
  x = features.astype(dtype)
  kernel = kernel.astype(dtype)
  blk = min(n_in, min(SCATTER_BLOCK_ELEMENTS, max_chunk_elements) // max(k * c_out, 1))
  if blk < min(n_in, MIN_BLOCK_ROWS):
    acc = jnp.zeros((num_out + 1, c_out), dtype)  # row num_out takes the missing entries
    return _matmul_scatter_offset_chunks(x, in_map, kernel, acc, max_chunk_elements)[:num_out]
  blk, pad = _row_blocks(n_in, blk)
  if pad:
    x = jnp.pad(x, ((0, pad), (0, 0)))
    in_map = jnp.pad(in_map, ((0, pad), (0, 0)), constant_values=-1)
  return _scatter_blocks(x, in_map, kernel, num_out, blk)[0][:num_out]


def _block_rows(a: jax.Array, i: jax.Array, blk: int) -> jax.Array:
  return lax.dynamic_slice_in_dim(a, i * blk, blk)


def _out_rows(maps: jax.Array, i: jax.Array, blk: int, num_out: int) -> jax.Array:
  """Block ``i``'s map entries, flat [blk*K], with -1 (none) sent to the spare row ``num_out``."""
  block = _block_rows(maps, i, blk).reshape(-1)
  return jnp.where(block < 0, num_out, block)


def _scatter_blocks_impl(x, maps, kernel, num_out, blk):
  """Forward of `_scatter_blocks`: [num_out + 1, C_out] (the last row collects missing entries)."""
  k, c_in, c_out = kernel.shape
  w = kernel.transpose(1, 0, 2).reshape(c_in, k * c_out)  # output rows reshape (free) to (n, k)

  def compute(acc, i):
    y = (_block_rows(x, i, blk) @ w).reshape(blk * k, c_out)
    return _add_rows(acc, _out_rows(maps, i, blk, num_out), y)  # in place in the loop

  def body(acc, i):
    live = jnp.any(_block_rows(maps, i, blk) >= 0)
    return lax.cond(live, compute, lambda a, _: a, acc, i), None

  # Block 0 unconditionally (carry type, see `_fold`), the others skipped when empty.
  acc = compute(jnp.zeros((num_out + 1, c_out), x.dtype), jnp.int32(0))
  return lax.scan(body, acc, jnp.arange(1, x.shape[0] // blk, dtype=jnp.int32))[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _scatter_blocks(x, maps, kernel, num_out, blk):
  """`matmul_scatter` over row blocks: x [nb*blk, C_in], maps [nb*blk, K] (-1 = none),
  kernel [K, C_in, C_out] -> ([num_out + 1, C_out],).

  Custom VJP: autodiff's transpose of the skipped-block scan copies the whole accumulator's
  cotangent at every block (measured 2-17x slower backward with cache-sized blocks). Here the
  backward is output-stationary per block of input rows: gather the block's output-row
  cotangents [blk, K*C_out] once, then dx_blk = g @ W^T and dW += x_blk^T @ g; empty blocks
  are skipped. Forward-mode differentiation is not available on this path (``compute=
  "gather_first"`` has it).
  """
  return (_scatter_blocks_impl(x, maps, kernel, num_out, blk),)


def _scatter_blocks_fwd(x, maps, kernel, num_out, blk):
  return (_scatter_blocks_impl(x, maps, kernel, num_out, blk),), (x, maps, kernel)


def _scatter_blocks_bwd(num_out, blk, res, cotangents):
  x, maps, kernel = res
  k, c_in, c_out = kernel.shape
  # Row num_out (where missing entries land) is cut off by matmul_scatter's [:num_out], so its
  # cotangent is already 0 and the missing entries gather no gradient.
  g = cotangents[0]
  w_t = kernel.transpose(0, 2, 1).reshape(k * c_out, c_in)

  def grads(i):
    gy = _take_rows(g, _out_rows(maps, i, blk, num_out)).reshape(blk, k * c_out)
    return gy @ w_t, _block_rows(x, i, blk).T @ gy  # dx block [blk, C_in], dW [C_in, K*C_out]

  def body(dw, i):
    live = jnp.any(_block_rows(maps, i, blk) >= 0)
    dx_blk, dw_blk = lax.cond(live, grads,
                              lambda _: (jnp.zeros_like(x, shape=(blk, c_in)), jnp.zeros_like(dw)), i)
    return dw + dw_blk, dx_blk

  dx0, dw = grads(jnp.int32(0))  # block 0 outside: the carry's shard_map type (see `_fold`)
  dw, dx_rest = lax.scan(body, dw, jnp.arange(1, x.shape[0] // blk, dtype=jnp.int32))
  dx = jnp.concatenate([dx0, dx_rest.reshape(-1, c_in)], 0)
  dkernel = dw.reshape(c_in, k, c_out).transpose(1, 0, 2)
  return (varying.match_varying(dx.astype(x.dtype), x), None,
          varying.match_varying(dkernel.astype(kernel.dtype), kernel))


_scatter_blocks.defvjp(_scatter_blocks_fwd, _scatter_blocks_bwd)


def _matmul_scatter_offset_chunks(x, in_map, kernel, acc, max_chunk_elements):
  """`matmul_scatter` over chunks of offsets (all rows per step), for very wide K*C_out."""
  n_in, c_in = x.shape
  k, _, c_out = kernel.shape
  g, n = _chunking(k, n_in * c_out, max_chunk_elements)
  maps, w = _pad_offsets(in_map, kernel, g, n, acc.shape[0] - 1)
  w = w.reshape(n, g, c_in, c_out).transpose(0, 2, 1, 3).reshape(n, c_in, g * c_out)

  def body(acc, i):
    return _add_rows(acc, _chunk(maps, i, g).reshape(-1), (x @ w[i]).reshape(n_in * g, c_out))

  return _fold(body, acc, n)


@functools.partial(jax.jit, static_argnames=("disjoint", "max_chunk_elements"))
def gather_max(features: jax.Array, out_map: jax.Array, *, disjoint: bool = False,
               max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> jax.Array:
  """spconv max pooling arithmetic: out[o] = max(0, max_k x[out_map[o, k]]) (-1 entries read 0).

  The value alone is a running max over the offsets (`_max_over_offsets`). The winning input row
  per output number (the first maximum; none when the 0 wins), which the gradient needs, comes
  from one gather of all offsets reduced by max and argmax (`_running_max`). The gradient goes to
  that winner only:

  * ``disjoint=False``: one differentiable gather picks the values, and autodiff's gradient is a
    scatter-add of N_out*C single numbers (any pooling windows).
  * ``disjoint=True`` (the caller guarantees that every input row appears in at most one
    (output, offset) entry, true when each window spans <= the stride along every axis, e.g. the
    k2/s2 pools of the TPC paper's trunk): a custom JVP whose transpose *gathers* instead. Each
    input row's one output row (its owner) is found by a scatter of N_out*K row indices, and
    dx[n] = where(win[owner[n]] == n, dy[owner[n]], 0): two [N_in, C] row gathers, no scatter of
    single numbers. Same gradient exactly (tested against the scatter path, ties included);
    forward mode works too (a row scatter-add).

  Args:
    features: [N_in, C]; out_map: [N_out, K].
    disjoint: see above (static).
    max_chunk_elements: unused (the gathered block is bounded by ``POOL_BLOCK_ELEMENTS``); kept
      for a uniform signature.

  Returns:
    [N_out, C].
  """
  del max_chunk_elements
  # Materialise the map: XLA would otherwise fuse the kernel map's last steps into the gathers and
  # reductions below and recompute them for each of the C channels (a probe: the TPC trunk's
  # first pool at batch 64, layer alone, one core, forward+backward 69 -> 31 ms; the whole pool
  # change in BENCHMARKS.md, scripts/profile_sparse_trunk.py).
  out_map = _materialise(out_map)
  if disjoint:
    return _gather_max_disjoint(features, out_map)
  n_in, c = features.shape
  x = jnp.concatenate([features, jnp.zeros((1, c), features.dtype)], 0)  # row n_in: spconv's 0 init
  _, win = _running_max(lax.stop_gradient(features), out_map)
  return km._take(x.reshape(-1), win * c + jnp.arange(c, dtype=jnp.int32))


def _materialise(a: jax.Array) -> jax.Array:
  """``a`` [N, ...] copied by a scatter, which XLA does not fuse into its consumers.

  (`lax.optimization_barrier` does not do this on XLA:CPU: the barrier is removed before fusion.)
  """
  idx = jnp.arange(a.shape[0], dtype=jnp.int32)[:, None]
  dn = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                   scatter_dims_to_operand_dims=(0,))
  return lax.scatter(jnp.zeros_like(a), idx, a, dn, indices_are_sorted=True, unique_indices=True,
                     mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _with_zero_row(features: jax.Array, out_map: jax.Array) -> tuple[jax.Array, jax.Array]:
  """([N_in + 1, C] features with a zero row N_in (spconv's 0 init), the map with -1 -> N_in)."""
  n_in, c = features.shape
  x = jnp.concatenate([features, jnp.zeros((1, c), features.dtype)], 0)
  return x, jnp.where(out_map < 0, n_in, out_map)


def _max_over_offsets(features: jax.Array, out_map: jax.Array) -> jax.Array:
  """max(0, max_k x[out_map[:, k]]) [N_out, C] alone (-1 entries read 0; NaNs never win).

  A running max, one [N_out, C] row gather per offset. Without the winner this loop is the
  fastest form XLA gives here (a probe, the first pool of the TPC trunk at batch 64, one core:
  6.6 ms, against 23 ms for `_running_max`'s gathered block reduced by max alone).
  """
  n_in, c = features.shape
  n_out, k = out_map.shape
  x, maps = _with_zero_row(features, out_map)

  def step(t, best):
    v = _take_rows(x, lax.dynamic_index_in_dim(maps, t, axis=1, keepdims=False))
    return jnp.where(v > best, v, best)  # strict: NaN and values <= 0 never beat the 0 init

  # Offset 0 outside the loop, so that the carry is device-varying inside shard_map (see `_fold`).
  init = step(0, jnp.zeros((n_out, c), x.dtype))
  return lax.fori_loop(1, k, step, init, unroll=max(1, min(k - 1, 8)))


def _running_max(features: jax.Array, out_map: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(max(0, max_k x[out_map[:, k]]) [N_out, C], the first winning input row [N_out, C] int32).

  The winner is N_in where no input beats the 0 (no input, or all inputs <= 0 or NaN): values
  <= 0 and NaNs are clamped to 0 and a 0 slot is put first, so `jnp.argmax` (first maximum)
  picks an input only when it is strictly above 0, as a running max from spconv's 0 init would.

  All K offsets are gathered at once, [rows, K + 1, C], and reduced with max and argmax: XLA
  fuses the gather into the reductions (a probe, the TPC trunk's first pool at batch 64, one
  core: one block 7.5 ms, against 44 ms for a loop over the offsets carrying the running winner).
  Above ``POOL_BLOCK_ELEMENTS`` gathered numbers it steps over blocks of output rows (a loop,
  ~3x slower per number, but the memory stays bounded).
  """
  n_in, c = features.shape
  n_out, k = out_map.shape
  x, maps = _with_zero_row(features, out_map)

  def block(rows_map):  # [r, K] -> ([r, C] max, [r, C] winning row)
    r = rows_map.shape[0]
    v = _take_rows(x, rows_map.reshape(-1)).reshape(r, k, c)
    v = jnp.concatenate([jnp.zeros((r, 1, c), v.dtype), jnp.where(v > 0, v, 0)], 1)
    slot = jnp.argmax(v, axis=1).astype(jnp.int32)  # 0: the init 0 wins
    candidates = jnp.concatenate([jnp.full((r, 1), n_in, jnp.int32), rows_map], 1)  # [r, K + 1]
    return jnp.max(v, axis=1), jnp.take_along_axis(candidates, slot, axis=1, mode="clip")

  rows = max(1, POOL_BLOCK_ELEMENTS // ((k + 1) * c))
  if n_out <= rows:
    return block(maps)
  rows, pad = _row_blocks(n_out, rows)
  maps = jnp.pad(maps, ((0, pad), (0, 0)), constant_values=n_in) if pad else maps
  best, win = lax.map(block, maps.reshape(-1, rows, k))
  return best.reshape(-1, c)[:n_out], win.reshape(-1, c)[:n_out]


@jax.custom_jvp
def _gather_max_disjoint(features: jax.Array, out_map: jax.Array) -> jax.Array:
  """`gather_max` for disjoint windows: [N_in, C], [N_out, K] -> [N_out, C].

  Its JVP is a row segment-sum, out_dot[o] = sum over inputs n owned by o of
  where(win[o] == n, x_dot[n], 0), whose transpose (the reverse-mode gradient) is a row gather.
  """
  return _max_over_offsets(features, out_map)


@_gather_max_disjoint.defjvp
def _gather_max_disjoint_jvp(primals, tangents):
  features, out_map = primals
  x_dot = tangents[0]
  best, win = _running_max(features, out_map)
  n_in, c = features.shape
  n_out, k = out_map.shape
  # owner[n]: the output row whose window holds input n (n_out: none). Row n_in collects the -1s.
  rows = jnp.where(out_map < 0, n_in, out_map).reshape(-1)
  dn = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                   scatter_dims_to_operand_dims=(0,))
  owner = lax.scatter(jnp.full((n_in + 1,), n_out, jnp.int32), rows[:, None],
                      jnp.repeat(jnp.arange(n_out, dtype=jnp.int32), k), dn,
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)[:n_in]
  win = jnp.concatenate([win, jnp.full((1, c), n_in, jnp.int32)], 0)  # row n_out: nobody wins
  mine = _take_rows(win, owner) == jnp.arange(n_in, dtype=jnp.int32)[:, None]  # [N_in, C]
  acc = jnp.zeros((n_out + 1, c), best.dtype)
  out_dot = _add_rows(acc, owner, jnp.where(mine, x_dot, 0).astype(best.dtype))[:n_out]
  return best, out_dot


def choose_compute(n_in: int, n_out: int, k: int, c_in: int, c_out: int, has_in_map: bool) -> str:
  """Static CPU cost model (gathered/scattered numbers weigh ~40 multiply-adds) -> compute name."""
  costs = {
      "gather_first": 40.0 * n_out * k * c_in + float(n_out) * k * c_in * c_out,
      "matmul_gather": 40.0 * n_out * k * c_out + float(n_in + 1) * k * c_in * c_out,
  }
  if has_in_map:
    costs["matmul_scatter"] = 20.0 * n_in * k * c_out + float(n_in) * k * c_in * c_out
  return min(costs, key=costs.get)


def conv_compute(features: jax.Array, kmap: km.KernelMap, kernel: jax.Array, *, compute: str = "auto",
                 max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> jax.Array:
  """Applies the flat kernel [K, C_in, C_out] through a `KernelMap`; returns [N_out, C_out]."""
  if compute not in COMPUTES:
    raise ValueError(f"compute must be one of {COMPUTES}, got {compute!r}")
  n_in, c_in = features.shape
  n_out, k = kmap.out_map.shape
  c_out = kernel.shape[-1]
  if compute == "auto":
    compute = choose_compute(n_in, n_out, k, c_in, c_out, kmap.in_map is not None)
  if compute == "matmul_scatter":
    if kmap.in_map is None:
      raise ValueError("compute='matmul_scatter' needs an input-stationary map (stride-1 conv or SubM)")
    return matmul_scatter(features, kmap.in_map, kernel, n_out, max_chunk_elements=max_chunk_elements)
  return gather_matmul(features, kmap.out_map, kernel, order=compute,
                       max_chunk_elements=max_chunk_elements)


def raise_on_overflow(kmap: km.KernelMap, capacity: int, where: str) -> None:
  """Raises CapacityOverflowError (naming ``where``) when a concrete map has more sites than fit."""
  if is_concrete(kmap.num_sites):
    n = int(kmap.num_sites)
    if n > capacity:
      raise CapacityOverflowError(
          f"{where}: {n} output sites exist but out_capacity={capacity}; {n - capacity} site(s) would "
          f"be dropped. Pass out_capacity >= {n}.")


def check_kernel(st: SparseTensor, kernel: jax.Array, where: str) -> None:
  """Checks that ``kernel`` is [K0, K1, K2, C_in, C_out] with C_in = the features' channels."""
  if kernel.ndim != 5:
    raise ValueError(f"{where}: kernel must be [K0, K1, K2, C_in, C_out], got shape {kernel.shape}")
  if kernel.shape[3] != st.num_channels:
    raise ValueError(f"{where}: kernel expects C_in={kernel.shape[3]} but features have "
                     f"{st.num_channels} channels")


def finish_features(features: jax.Array, bias: jax.Array | None, coords: jax.Array) -> jax.Array:
  """Adds the bias and zeroes the padding rows (coords[:, 0] < 0): [N, C] -> [N, C]."""
  if bias is not None:
    features = features + bias.astype(features.dtype)
  return jnp.where((coords[:, 0] >= 0)[:, None], features, 0)


def sparse_conv(st: SparseTensor, kernel: jax.Array, bias: jax.Array | None = None, *,
                strides: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                dilation: int | Sequence[int] = 1, out_capacity: int | None = None,
                method: str = "auto", compute: str = "auto",
                max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                where: str = "sparse_conv") -> SparseTensor:
  """Regular sparse 3D convolution (spconv ``SparseConv3d``).

  Strided convolutions with kernel sizes divisible by the strides and unit dilation run through
  `space_to_depth` + a stride-1 convolution (see the module docstring); the result is the same.

  Args:
    st: input with features [N_in, C_in].
    kernel: [K0, K1, K2, C_in, C_out]; out[o] = sum_k kernel[k]^T x[o*s - p + k*d].
    bias: [C_out] or None, added on active output sites only.
    strides, padding, dilation: int or 3 ints.
    out_capacity: static number of output rows; default `kernel_map.default_out_capacity` (never
      overflows, generous). Extra sites raise `CapacityOverflowError` eagerly, or are counted in
      ``overflow`` under jit.
    method: kernel-map implementation ("auto", "sort", "grid", "bitmap").
    compute: arithmetic ("auto", "gather_first", "matmul_gather", "matmul_scatter"); with the
      space-to-depth route it applies to the coarse stride-1 convolution. "matmul_scatter"
      (auto's usual choice for stride-1 convs) differentiates in reverse mode only; pass
      "gather_first" for forward mode (``jax.jvp``, ``jax.jacfwd``).
    max_chunk_elements: memory bound of one gathered chunk.
    where: name used in error messages.

  Returns:
    SparseTensor on the output grid floor((in + 2p - d(k-1) - 1)/s) + 1.
  """
  check_kernel(st, kernel, where)
  ks = tuple(kernel.shape[:3])
  ss, ps, ds = km.triple(strides, "strides"), km.triple(padding, "padding"), km.triple(dilation, "dilation")
  out_shape = km.conv_output_shape(st.spatial_shape, ks, ss, ps, ds)
  if out_capacity is None:
    out_capacity = km.default_out_capacity(st.capacity, st.batch_size, out_shape, ks, ss, ds)
  if can_space_to_depth(ks, ss, ds):
    s2d, kmap = km.build_space_to_depth_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps,
                                            out_capacity, method=method)
    features, kernel = _regroup_features(st.features, s2d, ss), space_to_depth_kernel(kernel, ss)
  else:
    kmap = km.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps, ds, out_capacity,
                             method=method)
    features = st.features
  raise_on_overflow(kmap, out_capacity, where)
  flat = kernel.reshape((-1,) + kernel.shape[3:])
  out = conv_compute(features, kmap, flat, compute=compute, max_chunk_elements=max_chunk_elements)
  return SparseTensor(coords=kmap.out_coords, features=finish_features(out, bias, kmap.out_coords),
                      spatial_shape=out_shape, batch_size=st.batch_size,
                      overflow=st.overflow + kmap.overflow)


def can_space_to_depth(kernel_size: Sequence[int], strides: Sequence[int],
                       dilation: Sequence[int]) -> bool:
  """True when a regular conv is exactly a space-to-depth + stride-1 conv: some stride > 1, every
  kernel size a multiple of its stride, unit dilation."""
  return (any(s > 1 for s in strides) and all(d == 1 for d in dilation)
          and all(k % s == 0 for k, s in zip(kernel_size, strides)))


def space_to_depth(st: SparseTensor, kernel_size: Sequence[int], strides: Sequence[int],
                   padding: Sequence[int], *, method: str = "auto",
                   where: str = "space_to_depth") -> SparseTensor:
  """Regroups sites into coarse cells of s0*s1*s2 voxels, the voxels becoming channels.

  Input voxel i (per axis, padding p) lies in coarse cell c = (i + p) // s at residue r = (i + p) % s.
  The coarse grid keeps the cells that can reach an output of the strided conv
  (out + K/s - 1 per axis); a regular stride-1 conv with kernel K/s on it, using
  `space_to_depth_kernel`, equals the strided conv on ``st`` (same sites, same rows).
  `sparse_conv` does this internally (with `kernel_map.build_space_to_depth_map`).

  Args:
    st: [N, C] sparse tensor.
    kernel_size, strides, padding: 3 ints each, kernel_size divisible by strides.
    method: kernel-map implementation ("auto", "sort", "grid", "bitmap").
    where: name used in error messages.

  Returns:
    SparseTensor with capacity N (never overflows) and features [N, s0*s1*s2*C], channel
    ((r0*s1 + r1)*s2 + r2)*C + c, zeros for empty voxels; rows sorted by coarse key.
  """
  ks, ss, ps = (tuple(int(v) for v in t) for t in (kernel_size, strides, padding))
  if not can_space_to_depth(ks, ss, (1, 1, 1)):
    raise ValueError(f"{where}: space_to_depth needs kernel sizes divisible by strides, got kernel {ks}, "
                     f"strides {ss}")
  s2d, _ = km.build_space_to_depth_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps, 1,
                                       method=method)  # the map is dropped (dead code under jit)
  return SparseTensor(coords=s2d.coords, features=_regroup_features(st.features, s2d, ss),
                      spatial_shape=s2d.spatial_shape, batch_size=st.batch_size,
                      overflow=st.overflow)


def _regroup_features(features: jax.Array, s2d: km.SpaceToDepth, strides: Sequence[int]) -> jax.Array:
  """[N, C] -> [N, s0*s1*s2*C] coarse-cell features (zeros for empty voxels) by one row gather."""
  n, ch = features.shape
  n_res = int(np.prod(strides))
  slot = jnp.where(s2d.slot >= 0, s2d.slot, n * n_res)
  # Source row of every (cell, residue) slot (n = a zero row): gathering is cheaper than scattering.
  src = jnp.full((n * n_res,), n, jnp.int32).at[slot].set(jnp.arange(n, dtype=jnp.int32), mode="drop")
  x = jnp.concatenate([features, jnp.zeros((1, ch), features.dtype)], 0)
  return _take_rows(x, src).reshape(n, n_res * ch)


def space_to_depth_kernel(kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """[K0, K1, K2, C_in, C_out] -> [K0/s0, K1/s1, K2/s2, s0*s1*s2*C_in, C_out] for `space_to_depth`."""
  k0, k1, k2, c_in, c_out = kernel.shape
  s0, s1, s2 = (int(s) for s in strides)
  w = kernel.reshape(k0 // s0, s0, k1 // s1, s1, k2 // s2, s2, c_in, c_out)
  w = w.transpose(0, 2, 4, 1, 3, 5, 6, 7)
  return w.reshape(k0 // s0, k1 // s1, k2 // s2, s0 * s1 * s2 * c_in, c_out)


def subm_conv(st: SparseTensor, kernel: jax.Array, bias: jax.Array | None = None, *,
              dilation: int | Sequence[int] = 1, method: str = "auto", compute: str = "auto",
              max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
              where: str = "subm_conv") -> SparseTensor:
  """Submanifold sparse 3D convolution (spconv ``SubMConv3d``): output sites = input sites.

  Args:
    st: input with features [N, C_in].
    kernel: [K0, K1, K2, C_in, C_out] with odd K; out[i] = sum_k kernel[k]^T x[i + (k - (K-1)/2)*d].
    bias: [C_out] or None (active sites only).
    dilation: int or 3 ints.
    method, compute, max_chunk_elements, where: as in `sparse_conv`.
  """
  check_kernel(st, kernel, where)
  ks = tuple(kernel.shape[:3])
  if any(k % 2 == 0 for k in ks):
    raise ValueError(f"{where}: submanifold convolution needs odd kernel sizes, got {ks}")
  kmap = km.build_subm_map(st.coords, st.spatial_shape, st.batch_size, ks,
                           km.triple(dilation, "dilation"), method=method)
  flat = kernel.reshape((-1,) + kernel.shape[3:])
  out = conv_compute(st.features, kmap, flat, compute=compute, max_chunk_elements=max_chunk_elements)
  return st.replace(features=finish_features(out, bias, st.coords))


def sparse_max_pool(st: SparseTensor, kernel_size: int | Sequence[int], *,
                    strides: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0,
                    dilation: int | Sequence[int] = 1, out_capacity: int | None = None,
                    method: str = "auto", max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                    where: str = "sparse_max_pool") -> SparseTensor:
  """spconv ``SparseMaxPool3d``: same site rule as `sparse_conv`, out = max(0, max of active inputs).

  Args:
    st: input [N_in, C].
    kernel_size: int or 3 ints; strides default to kernel_size.
    padding, dilation: int or 3 ints.
    out_capacity: as in `sparse_conv` (default N_in when the kernel does not exceed the stride).
    method, max_chunk_elements, where: as in `sparse_conv`.
  """
  ks = km.triple(kernel_size, "kernel_size")
  ss = ks if strides is None else km.triple(strides, "strides")
  ps, ds = km.triple(padding, "padding"), km.triple(dilation, "dilation")
  out_shape = km.conv_output_shape(st.spatial_shape, ks, ss, ps, ds)
  if out_capacity is None:
    out_capacity = km.default_out_capacity(st.capacity, st.batch_size, out_shape, ks, ss, ds)
  kmap = km.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, ps, ds, out_capacity,
                           method=method, build_in_map=False)
  raise_on_overflow(kmap, out_capacity, where)
  disjoint = all(d * (k - 1) + 1 <= s for k, s, d in zip(ks, ss, ds))  # one window per input
  out = gather_max(st.features, kmap.out_map, disjoint=disjoint,
                   max_chunk_elements=max_chunk_elements)
  out = jnp.where((kmap.out_coords[:, 0] >= 0)[:, None], out, 0)
  return SparseTensor(coords=kmap.out_coords, features=out, spatial_shape=out_shape,
                      batch_size=st.batch_size, overflow=st.overflow + kmap.overflow)
