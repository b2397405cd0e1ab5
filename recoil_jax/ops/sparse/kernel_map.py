"""Kernel maps (rulebooks) for sparse 3D convolution and pooling, jittable with static capacities.

Semantics follow spconv (github.com/traveller59/spconv); submanifold convolution is that of
Graham & van der Maaten, arXiv 1706.01307. Per axis, with kernel K, stride s, padding p, dilation d:

* regular conv / pool: output site o exists iff i = o*s - p + k*d is an active input for some kernel
  offset k in [0, K) and 0 <= o < out, out = floor((in + 2p - d(K-1) - 1)/s) + 1;
* submanifold conv: output sites = input sites, input for offset k at i + (k - (K-1)/2)*d (odd K).

Keys are linearised int32 (batch, i0, i1, i2) (see `tensor.linearize`); INT32_MAX is the sentinel.

Three interchangeable implementations (``method``), identical results:

* ``"bitmap"``: the input sites become a dense occupancy grid (one scatter of N_in keys). The output
  occupancy is its windowed OR, a separable max-pool with the conv's kernel, stride, padding and
  dilation: the last axis on bools, fused into packing each grid row into 32-bit words, the two outer
  axes on the packed words. Each bitmap keeps, per word, the number of set bits before it. The output
  rows are the first N_out set bits ("select": the word of each rank by a scatter of word starts and a
  running max, the bit by binary search with popcounts), and every map entry is a "rank" query (one
  gather of a word and its prefix, a popcount); the K2 taps along the last axis share one fetch of
  the row's words, and for stride-1 convs the in_map needs one query per K2 taps (a regular conv's
  outputs next to an input all exist, so their ranks are consecutive). Kernels that are a multiple
  of the stride (the TPC paper's k6/s2 conv, k2/s2 pooling) work on coarse cells of s0*s1*s2 voxels, a grid
  prod(s) times smaller (`build_space_to_depth_map`). No sort, no scatter of candidates, no prefix
  sum over the full key space: XLA's CPU sort, large scatters and cumsum cost tens of ns per element,
  while fused dense passes and gathers are fast. Costs ~1 byte per voxel of B*prod(grid), so it suits
  grids of up to ~10^8 voxels.
* ``"sort"`` / ``"grid"``: output sites are generated input-side: for each active input only the
  offsets compatible with the stride are emitted (<= ceil(K/s) per axis, not K). Inputs that must reach
  exactly the same outputs (same coarse cell floor((i + p)/s) and residue class) are first merged, so
  e.g. a k6/s2 conv emits 3^3 candidates per occupied 2^3 cell instead of 6^3 per input. Candidates are
  made unique with a static size either by sorting (``"sort"``) or by an occupancy grid + prefix sum
  over the output key space (``"grid"``).

``"auto"`` picks by a static cost model (the bitmap, except for few sites in very large grids). All
keep the lowest keys when the capacity is too small, so they give identical results; the extra sites
are counted, never silently lost.

Rulebooks (K = K0*K1*K2 flat offsets, k = (k0*K1 + k1)*K2 + k2, same order as a [K0, K1, K2, ...]
kernel):

* ``out_map`` [N_out, K] int32: input row feeding output row o through offset k, or -1
  (output-stationary: a convolution is gather + matmul, no scatter/atomics);
* ``in_map`` [N_in, K] int32: output row fed by input row n through offset k, or -1 (input-stationary;
  built for stride-1 convolutions where it comes for free, used by the matmul-then-scatter compute).

No Python loop runs over sites; the only Python loops are over axes/residues/offsets at trace time.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recoil_jax.ops.sparse.tensor import INT32_MAX, _key_space, delinearize, linearize

Triple = tuple[int, int, int]
METHODS = ("auto", "sort", "grid", "bitmap")
# "auto" never picks "bitmap" above this many voxels (B * prod(grid), input + output): the bool
# occupancy and the bit grids cost ~1.1 bytes per voxel.
BITMAP_MAX_VOXELS = 1 << 28


@flax.struct.dataclass
class KernelMap:
  """Result of a kernel-map build.

  Attributes:
    out_coords: [N_out, 4] int32 output site coordinates (sorted by key, inactive rows last).
    out_map: [N_out, K] int32 input row per (output row, offset), -1 if none.
    in_map: [N_in, K] int32 output row per (input row, offset), -1 if none; None when not built.
    num_sites: [] int32 number of output sites that exist (may exceed N_out).
    overflow: [] int32 max(num_sites - N_out, 0), sites dropped for lack of capacity.
  """
  out_coords: jax.Array
  out_map: jax.Array
  in_map: jax.Array | None
  num_sites: jax.Array
  overflow: jax.Array


def triple(x: int | Sequence[int], name: str) -> Triple:
  """Normalises an int or a 3-sequence of ints to a tuple of 3 ints."""
  if isinstance(x, (int, np.integer)):
    return (int(x),) * 3
  t = tuple(int(v) for v in x)
  if len(t) != 3:
    raise ValueError(f"{name} must be an int or 3 ints, got {x!r}")
  return t  # type: ignore[return-value]


def conv_output_shape(spatial_shape: Sequence[int], kernel_size: Sequence[int],
                      strides: Sequence[int], padding: Sequence[int],
                      dilation: Sequence[int]) -> Triple:
  """Output grid of a regular conv/pool: floor((in + 2p - d(k-1) - 1)/s) + 1 per axis (checked >= 1)."""
  out = []
  for a in range(3):
    i, k, s, p, d = spatial_shape[a], kernel_size[a], strides[a], padding[a], dilation[a]
    if k < 1 or s < 1 or d < 1 or p < 0:
      raise ValueError(f"axis {a}: need kernel_size >= 1, strides >= 1, dilation >= 1, padding >= 0; "
                       f"got k={k}, s={s}, d={d}, p={p}")
    o = (i + 2 * p - d * (k - 1) - 1) // s + 1
    if o < 1:
      raise ValueError(f"axis {a}: input size {i} with kernel {k}, stride {s}, padding {p}, dilation {d} "
                       "gives an empty output grid")
    out.append(o)
  return tuple(out)  # type: ignore[return-value]


def _axis_tables(k: int, s: int, d: int):
  """Static per-axis tables for input residue r = (i + p) mod s.

  For residue r the reachable outputs are o = c - j (c = (i + p) // s) for j in J(r), with kernel offset
  k = (j*s + r)/d. Returns (cls_of_r [s], j_table [n_cls, M], k_table [s, M], n_cls, M); padding entries
  are -1; an empty J(r) gets class -1.
  """
  js = []
  for r in range(s):
    js.append(tuple(sorted((kk * d - r) // s for kk in range(k) if (kk * d - r) % s == 0)))
  classes = sorted({j for j in js if j})
  m = max((len(j) for j in js), default=0)
  m = max(m, 1)
  cls_of_r = np.array([classes.index(j) if j else -1 for j in js], np.int32)
  j_table = np.full((max(len(classes), 1), m), -1, np.int32)
  for c, j in enumerate(classes):
    j_table[c, :len(j)] = j
  k_table = np.full((s, m), -1, np.int32)
  for r, j in enumerate(js):
    for t, jj in enumerate(j):
      k_table[r, t] = (jj * s + r) // d
  return cls_of_r, j_table, k_table, max(len(classes), 1), m


# ---------------------------------------------------------------------------------------------------
# Bitmaps: dense occupancy packed into 32-bit words, with rank (key -> row) and select (row -> key).
#
# A key space is seen as rows of ``row_len`` keys (the last grid axis; the whole space for flat keys);
# each row is packed into ``wpr = ceil(row_len/32)`` words (bit b of word j of row q = key
# q*row_len + 32j + b, unused high bits 0). Packing along the last axis keeps every pass a plain
# reduction or an elementwise op over the grid: XLA fuses a flat re-pack of a 4D array into a slow
# per-element index computation.

def _take(a: jax.Array, idx: jax.Array) -> jax.Array:
  """a[idx] for a 1D array and indices known to lie in [0, len(a)) (no negative-index wrapping)."""
  dn = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,))
  return lax.gather(a, idx[..., None], dn, (1,), mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


class _Bitmap:
  """Packed occupancy with rank/select queries (trace-time helper inside jitted code, not a pytree).

  Attributes:
    table: [R*wpr, 2] int32: per word its bits (bitcast) and the number of set bits before it.
    words: [R*wpr] uint32 and excl: [R*wpr] int32, the two columns of ``table``; total: [] int32.
    rows, row_len, wpr: number of rows, keys per row and words per row (static).
  """

  def __init__(self, words: jax.Array, row_len: int):
    """words: [..., wpr] uint32 packed rows."""
    self.row_len = int(row_len)
    self.wpr = int(words.shape[-1])
    words = words.reshape(-1)
    self.rows = words.shape[0] // self.wpr
    counts = lax.population_count(words).astype(jnp.int32)
    incl = jnp.cumsum(counts, dtype=jnp.int32)
    self.total = incl[-1]
    # [W, 2] int32 (word bits, set bits before it): one gather fetches both for a query.
    self.table = _materialize(
        jnp.stack([lax.bitcast_convert_type(words, jnp.int32), incl - counts], axis=1),
        self.total >= 0)
    self.words = lax.bitcast_convert_type(self.table[:, 0], jnp.uint32)
    self.excl = self.table[:, 1]

  def _fetch(self, w: jax.Array):
    """(word [...] uint32, excl [...] int32) of word indices w in [0, W)."""
    dn = lax.GatherDimensionNumbers(offset_dims=(w.ndim,), collapsed_slice_dims=(0,),
                                    start_index_map=(0,))
    both = lax.gather(self.table, w[..., None], dn, (1, 2),
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return lax.bitcast_convert_type(both[..., 0], jnp.uint32), both[..., 1]

  def rank_rc(self, row: jax.Array, col: jax.Array, valid: jax.Array) -> jax.Array:
    """Rank of the set key at (row, col) (= row*row_len + col); -1 where unset or not ``valid``.

    Callers pass rows and columns computed from coordinates, which spares integer divisions.
    """
    valid = valid & (row >= 0) & (row < self.rows) & (col >= 0) & (col < self.row_len)
    w = jnp.where(valid, row * self.wpr + (col >> 5), 0)
    b = (col & 31).astype(jnp.uint32)
    word, excl = self._fetch(w)
    present = valid & (((word >> b) & 1) == 1)
    below = lax.population_count(word & ((jnp.uint32(1) << b) - 1)).astype(jnp.int32)
    return jnp.where(present, excl + below, -1)

  def rank_rows(self, row: jax.Array, col: jax.Array, valid: jax.Array) -> jax.Array:
    """`rank_rc` for several columns of one row: row [..., 1], col and valid [..., L] -> [..., L].

    The row's words are fetched once (one gather of wpr table entries instead of L), which pays
    when the L columns are the K2 taps of a kernel along the last grid axis.
    """
    if self.wpr > 4:
      return self.rank_rc(*jnp.broadcast_arrays(row, col, valid))
    row_ok = (row >= 0) & (row < self.rows)
    valid = valid & row_ok & (col >= 0) & (col < self.row_len)
    start = jnp.where(row_ok, row, 0)[..., 0] * self.wpr
    dn = lax.GatherDimensionNumbers(offset_dims=(start.ndim, start.ndim + 1), collapsed_slice_dims=(),
                                    start_index_map=(0,))
    block = lax.gather(self.table, start[..., None], dn, (self.wpr, 2),
                       mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)  # [..., wpr, 2]
    j = jnp.where(valid, col >> 5, 0)
    word = lax.bitcast_convert_type(block[..., 0, 0], jnp.uint32)[..., None]
    excl = block[..., 0, 1][..., None]
    for t in range(1, self.wpr):
      word = jnp.where(j == t, lax.bitcast_convert_type(block[..., t, 0], jnp.uint32)[..., None], word)
      excl = jnp.where(j == t, block[..., t, 1][..., None], excl)
    b = (col & 31).astype(jnp.uint32)
    present = valid & (((word >> b) & 1) == 1)
    below = lax.population_count(word & ((jnp.uint32(1) << b) - 1)).astype(jnp.int32)
    return jnp.where(present, excl + below, -1)

  def rank(self, keys: jax.Array) -> jax.Array:
    """Rank of each set key (number of set keys below it); -1 for unset or out-of-range keys."""
    if self.rows == 1:
      return self.rank_rc(jnp.zeros_like(keys), keys, jnp.ones(keys.shape, jnp.bool_))
    kk = jnp.maximum(keys, 0)
    row = lax.div(kk, jnp.int32(self.row_len))
    return self.rank_rc(row, kk - row * self.row_len, keys >= 0)

  def select(self, capacity: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ``capacity`` lowest set keys in ascending order as (row, col, valid), each [capacity]."""
    r = jnp.arange(capacity, dtype=jnp.int32)
    # Word of each rank: non-empty word w holds ranks excl[w]...; mark w at its first rank and fill
    # forward (running max). Cheaper on CPU than a binary search over all words.
    n_words = self.words.shape[0]
    first = jnp.where((self.words != 0) & (self.excl < capacity), self.excl, capacity)
    w = jnp.zeros((capacity,), jnp.int32).at[first].max(jnp.arange(n_words, dtype=jnp.int32),
                                                         mode="drop")
    w = lax.cummax(w)
    word, excl = self._fetch(w)
    k = (r - excl).astype(jnp.uint32)  # r is the k-th set bit of this word
    pos = jnp.zeros_like(k)
    for width in (16, 8, 4, 2, 1):  # binary search for the bit position
      low = lax.population_count((word >> pos) & jnp.uint32((1 << width) - 1))
      up = k >= low
      k = jnp.where(up, k - low, k)
      pos = jnp.where(up, pos + width, pos)
    if self.wpr == 1:
      row, col = w, pos.astype(jnp.int32)
    else:
      row = lax.div(w, jnp.int32(self.wpr))
      col = (w - row * self.wpr) * 32 + pos.astype(jnp.int32)
    return row, col, r < self.total

  def select_keys(self, capacity: int) -> jax.Array:
    """[capacity] int32 lowest set keys, ascending, INT32_MAX padding."""
    row, col, valid = self.select(capacity)
    return jnp.where(valid, row * self.row_len + col, INT32_MAX).astype(jnp.int32)

  def rows_by_rank(self, rank: jax.Array) -> jax.Array:
    """Inverse of the ranks [N] of N unique keys: [N] int32 with entry rank[n] = n, -1 elsewhere."""
    n = rank.shape[0]
    return jnp.full((n,), -1, jnp.int32).at[jnp.where(rank >= 0, rank, n)].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")


def _materialize(x, pred: jax.Array):
  """Returns ``x`` (a pytree) through a `lax.cond` on an always-true runtime predicate.

  XLA's CPU fusion otherwise recomputes cheap producers (the windowed ORs, the prefix sums) inside
  every consumer, e.g. in each of many gathers; a conditional's operands are materialised once.
  """
  return lax.cond(pred, lambda t: t, lambda t: jax.tree_util.tree_map(jnp.zeros_like, t), x)


def _pack_rows(occ: jax.Array) -> jax.Array:
  """[..., L] bool -> [..., ceil(L/32)] uint32, bit b of word j = element 32j + b."""
  n = occ.shape[-1]
  wpr = -(-n // 32)
  pad = [(0, 0)] * (occ.ndim - 1) + [(0, wpr * 32 - n)]
  bits = jnp.pad(occ, pad).reshape(occ.shape[:-1] + (wpr, 32)).astype(jnp.uint32)
  return lax.reduce(bits << jnp.arange(32, dtype=jnp.uint32), jnp.uint32(0), lax.bitwise_or,
                    (occ.ndim,))


def _occupancy(keys: jax.Array, space: int) -> jax.Array:
  """[space] bool, True at the valid keys (INT32_MAX / out-of-range keys are dropped)."""
  return jnp.zeros((space,), jnp.bool_).at[keys].set(True, mode="drop")


def _flat_bitmap(keys: jax.Array, space: int) -> _Bitmap:
  """Bitmap of a flat key set (one row)."""
  return _Bitmap(_pack_rows(_occupancy(keys, space)), space)


def _window_or_axis(x: jax.Array, axis: int, k: int, s: int, p: int, d: int, o: int) -> jax.Array:
  """out[..., o, ...] = OR_kk x[..., o*s - p + kk*d, ...] along ``axis`` (zero padding)."""
  span = (o - 1) * s + (k - 1) * d + 1  # padded length the windows read
  hi = max(0, span - p - x.shape[axis])
  if p or hi:
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (p, hi, 0)
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
  y = None
  for kk in range(k):
    sl = lax.slice_in_dim(x, kk * d, kk * d + (o - 1) * s + 1, stride=s, axis=axis)
    y = sl if y is None else (y | sl)
  return y


def _dilated_bitmap(occ: jax.Array, ks: Triple, ss: Triple, ps: Triple, ds: Triple,
                    out_shape: Triple) -> jax.Array:
  """Packed output-site rule of a regular conv: out[b, o] = OR_k occ[b, o*s - p + k*d] (zero padding).

  Args:
    occ: [B, D0, D1, D2] bool input occupancy.
  Returns:
    [B, O0, O1, ceil(O2/32)] uint32 packed rows (see `_Bitmap`). The window is a product of per-axis
    windows, so separable passes give it exactly: the last axis on bools (fused into the packing), the
    two outer axes on the packed words (32x less data).
  """
  x = _window_or_axis(occ, 3, ks[2], ss[2], ps[2], ds[2], out_shape[2])
  x = _pack_rows(x)
  for a in (1, 0):
    x = _window_or_axis(x, a + 1, ks[a], ss[a], ps[a], ds[a], out_shape[a])
  return x


# ---------------------------------------------------------------------------------------------------
# Unique / lookup primitives (sort-, grid- or bitmap-based).

def _sort_cost(n_keys: int, n_queries: int, n_table: int) -> float:
  """Rough CPU cost (ns) of sort + binary search."""
  return 3.5 * n_keys * math.log2(max(n_keys, 2)) + 4.0 * n_queries * math.log2(max(n_table, 2))


def _grid_cost(space: int, n_keys: int) -> float:
  """Rough CPU cost (ns) of an occupancy grid over the key space."""
  return 15.0 * space + 10.0 * n_keys


def _bitmap_cost(space: int, n_keys: int, n_queries: int, capacity: int) -> float:
  """Rough CPU cost (ns) of an occupancy bitmap: fused passes over the space, scatters, rank queries."""
  return 1.0 * space + 10.0 * n_keys + 5.0 * n_queries + 2.0 * capacity * math.log2(max(space // 32, 2))


def _pick(method: str, sort_cost: float, grid_cost: float, space: int,
          bitmap_cost: float | None = None) -> str:
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  if method != "auto":
    return method
  costs = {"sort": sort_cost}
  if space <= (1 << 27):
    costs["grid"] = grid_cost
  if bitmap_cost is not None and space <= BITMAP_MAX_VOXELS:
    costs["bitmap"] = bitmap_cost
  return min(costs, key=costs.get)


def unique_keys(keys: jax.Array, space: int, capacity: int, method: str = "auto"):
  """Sorted unique keys with a static size, and the inverse index of every key.

  Args:
    keys: [M] int32 keys in [0, space), INT32_MAX for invalid entries.
    space: number of possible keys (static).
    capacity: static output size.
    method: "sort", "grid", "bitmap" or "auto".

  Returns:
    uniq: [capacity] int32 sorted unique keys (lowest ones if they do not fit), INT32_MAX padding.
    count: [] int32 number of distinct valid keys (may exceed capacity).
    inverse: [M] int32 row of each key in ``uniq``, -1 if invalid or dropped.
  """
  m = keys.shape[0]
  method = _pick(method, _sort_cost(m, m, capacity), _grid_cost(space, m), space,
                 _bitmap_cost(space, m, m, capacity))
  valid = keys != INT32_MAX
  if method == "bitmap":
    bm = _flat_bitmap(keys, space)
    inv = bm.rank(keys)
    return bm.select_keys(capacity), bm.total, jnp.where(inv < capacity, inv, -1).astype(jnp.int32)
  if method == "grid":
    occ = jnp.zeros((space,), jnp.int32).at[keys].set(1, mode="drop")
    pos = jnp.cumsum(occ, dtype=jnp.int32) - 1
    count = pos[-1] + 1
    target = jnp.where(occ > 0, pos, capacity)
    uniq = jnp.full((capacity,), INT32_MAX, jnp.int32).at[target].set(
        jnp.arange(space, dtype=jnp.int32), mode="drop")
    inv = pos.at[keys].get(mode="fill", fill_value=-1)
    inverse = jnp.where(valid & (inv < capacity), inv, -1)
    return uniq, count.astype(jnp.int32), inverse.astype(jnp.int32)
  skeys = jnp.sort(keys)
  first = jnp.concatenate([skeys[:1] != INT32_MAX, (skeys[1:] != skeys[:-1]) & (skeys[1:] != INT32_MAX)])
  rank = jnp.cumsum(first, dtype=jnp.int32) - 1
  count = jnp.sum(first, dtype=jnp.int32)
  uniq = jnp.full((capacity,), INT32_MAX, jnp.int32).at[jnp.where(first, rank, capacity)].set(
      skeys, mode="drop")
  inverse = _search(uniq, keys)
  return uniq, count, inverse


def _search(sorted_keys: jax.Array, queries: jax.Array) -> jax.Array:
  """Row of each query in ``sorted_keys`` (ascending, INT32_MAX padded), -1 if absent/invalid."""
  n = sorted_keys.shape[0]
  pos = jnp.searchsorted(sorted_keys, queries, method="scan_unrolled").astype(jnp.int32)
  pos_c = jnp.minimum(pos, n - 1)
  found = (sorted_keys[pos_c] == queries) & (queries != INT32_MAX)
  return jnp.where(found, pos_c, -1).astype(jnp.int32)


def lookup_keys(table: jax.Array, queries: jax.Array, space: int, method: str = "auto") -> jax.Array:
  """Row of each query key in an unsorted table of unique keys.

  Args:
    table: [N] int32 unique keys (INT32_MAX = empty row).
    queries: [Q] int32 keys (INT32_MAX = no query).
    space: number of possible keys (static).
    method: "sort" (argsort + binary search), "grid" (dense index grid), "bitmap" (rank in an
      occupancy bitmap, then row by rank) or "auto".

  Returns:
    [Q] int32 row in ``table`` or -1.
  """
  n, q = table.shape[0], queries.shape[0]
  method = _pick(method, _sort_cost(n, q, n), _grid_cost(space, q) - 5.0 * q, space,
                 _bitmap_cost(space, n, 2 * q, 0))
  if method == "bitmap":
    bm = _flat_bitmap(table, space)
    rows = bm.rows_by_rank(bm.rank(table))
    rank = bm.rank(queries)
    return jnp.where(rank >= 0, _take(rows, jnp.maximum(rank, 0)), -1).astype(jnp.int32)
  if method == "grid":
    grid = jnp.full((space,), -1, jnp.int32).at[table].set(jnp.arange(n, dtype=jnp.int32), mode="drop")
    return grid.at[queries].get(mode="fill", fill_value=-1).astype(jnp.int32)
  order = jnp.argsort(table).astype(jnp.int32)
  pos = _search(table[order], queries)
  return jnp.where(pos >= 0, order[jnp.maximum(pos, 0)], -1).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------
# Regular (strided) convolution / pooling.

def default_out_capacity(in_capacity: int, batch_size: int, out_shape: Sequence[int],
                         kernel_size: Sequence[int], strides: Sequence[int],
                         dilation: Sequence[int]) -> int:
  """Capacity that can never overflow: N_in * (max outputs one input reaches), capped at B*prod(out).

  One input reaches at most |J| <= ceil(K/s) outputs per axis (e.g. 1 for a k2/s2 pool, 27 for k6/s2,
  64 for k4/s1). Safe but generous; pass measured capacities for speed (see the layer docstrings).
  """
  reach = 1
  for a in range(3):
    reach *= _axis_tables(kernel_size[a], strides[a], dilation[a])[4]
  return int(max(1, min(in_capacity * reach, batch_size * int(np.prod(out_shape)))))


def build_conv_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], out_capacity: int, method: str = "auto",
                   build_in_map: bool | None = None) -> KernelMap:
  """Kernel map of a regular sparse conv / pool (spconv ``SparseConv3d`` site rule).

  Args:
    coords: [N_in, 4] int32 input coordinates (unique active sites; batch -1 = inactive).
    spatial_shape: input grid (D0, D1, D2).
    batch_size: B.
    kernel_size, strides, padding, dilation: 3-tuples.
    out_capacity: static number of output rows N_out.
    method: "sort", "grid", "bitmap" or "auto" (see the module docstring; identical results).
    build_in_map: also return the input-stationary map (default: only when all strides are 1).

  Returns:
    `KernelMap` over the output grid `conv_output_shape(...)`.
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ss, ps, ds = (tuple(int(v) for v in t) for t in (kernel_size, strides, padding, dilation))
  out_shape = conv_output_shape(shape, ks, ss, ps, ds)
  if out_capacity < 1:
    raise ValueError(f"build_conv_map: out_capacity must be >= 1, got {out_capacity}")
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  if build_in_map is None:
    build_in_map = all(s == 1 for s in ss)
  batch_size = int(batch_size)
  # Kernel a multiple of the stride: the bitmap works on coarse cells of s0*s1*s2 voxels (a grid
  # prod(s) times smaller) and expands the coarse map (see `build_space_to_depth_map`).
  coarse = any(s > 1 for s in ss) and all(d == 1 for d in ds) and all(k % s == 0 for k, s in zip(ks, ss))
  if method == "auto":
    if coarse:
      ext = space_to_depth_shape(shape, ks, ss, ps)
      ms = tuple(k // s for k, s in zip(ks, ss))
      prefer = _conv_map_prefers_bitmap(coords.shape[0], ext, out_shape, batch_size, ms, (1, 1, 1),
                                        (1, 1, 1), int(out_capacity), bool(build_in_map))
    else:
      prefer = _conv_map_prefers_bitmap(coords.shape[0], shape, out_shape, batch_size, ks, ss, ds,
                                        int(out_capacity), bool(build_in_map))
    method = "bitmap" if prefer else "auto"
  if method == "bitmap" and coarse:
    return _build_conv_map_coarse(coords, shape, batch_size, ks, ss, ps, int(out_capacity),
                                  bool(build_in_map))
  if method == "bitmap":
    return _build_conv_map_bitmap(coords, shape, batch_size, ks, ss, ps, ds, int(out_capacity),
                                  bool(build_in_map))
  return _build_conv_map(coords, shape, batch_size, ks, ss, ps, ds, int(out_capacity), method,
                         bool(build_in_map))


@functools.partial(jax.jit, static_argnums=tuple(range(1, 8)))
def _build_conv_map_coarse(coords, shape, batch_size, ks, ss, ps, out_capacity, build_in_map):
  """`build_conv_map` (bitmap) through the coarse map of `build_space_to_depth_map`: fine kernel
  offset k = j*s + r is coarse offset j at residue r."""
  s2d, cmap = _build_space_to_depth_map(coords, shape, batch_size, ks, ss, ps, out_capacity,
                                        "bitmap", build_in_map)
  n_in = coords.shape[0]
  ms = tuple(k // s for k, s in zip(ks, ss))
  n_res = int(np.prod(ss))
  k_total = int(np.prod(ks))
  # Fine row of every (coarse row, residue) slot, -1 where that voxel is empty.
  slot = jnp.where(s2d.slot >= 0, s2d.slot, n_in * n_res)
  src = jnp.full((n_in * n_res,), -1, jnp.int32).at[slot].set(jnp.arange(n_in, dtype=jnp.int32),
                                                              mode="drop")
  cm = cmap.out_map  # [N_out, M0*M1*M2] coarse rows
  fine = _take(src, jnp.maximum(cm, 0)[..., None] * n_res + jnp.arange(n_res, dtype=jnp.int32))
  fine = jnp.where((cm >= 0)[..., None], fine, -1)  # [N_out, M, n_res]
  fine = fine.reshape((out_capacity,) + ms + tuple(ss)).transpose(0, 1, 4, 2, 5, 3, 6)
  out_map = fine.reshape(out_capacity, k_total)
  in_map = None
  if build_in_map:  # input n (cell g, residue r) feeds through k = j*s + r only: coarse in_map[g, j]
    g = jnp.where(s2d.slot >= 0, s2d.slot // n_res, 0)
    r = jnp.where(s2d.slot >= 0, s2d.slot % n_res, -1)
    cin = jnp.where((s2d.slot >= 0)[:, None], _take_rows_int(cmap.in_map, g), -1)  # [N_in, M]
    hit = r[:, None] == jnp.arange(n_res, dtype=jnp.int32)  # [N_in, n_res]
    fine = jnp.where(hit[:, None, :], cin[:, :, None], -1)
    fine = fine.reshape((n_in,) + ms + tuple(ss)).transpose(0, 1, 4, 2, 5, 3, 6)
    in_map = fine.reshape(n_in, k_total)
  return KernelMap(out_coords=cmap.out_coords, out_map=out_map, in_map=in_map,
                   num_sites=cmap.num_sites, overflow=cmap.overflow)


def _take_rows_int(a: jax.Array, idx: jax.Array) -> jax.Array:
  """a[idx] for a [R, C] and indices in [0, R): [..., C]."""
  dn = lax.GatherDimensionNumbers(offset_dims=(idx.ndim,), collapsed_slice_dims=(0,),
                                  start_index_map=(0,))
  return lax.gather(a, idx[..., None], dn, (1, a.shape[1]),
                    mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _conv_map_prefers_bitmap(n_in: int, shape: Triple, out_shape: Triple, batch_size: int, ks: Triple,
                             ss: Triple, ds: Triple, out_capacity: int, build_in_map: bool) -> bool:
  """Static cost model (ns; constants fitted to the paper trunk's layers on a 2-core x86 CPU, where
  the bitmap was 2-30x faster): dense bitmap passes vs candidates + unique. The candidates win for
  few sites in very large grids."""
  in_space = batch_size * int(np.prod(shape))
  out_space = batch_size * int(np.prod(out_shape))
  if in_space + out_space > BITMAP_MAX_VOXELS:
    return False
  k_total = int(np.prod(ks))
  reach = int(np.prod([_axis_tables(ks[a], ss[a], ds[a])[4] for a in range(3)]))
  row_fetches = (out_capacity + (n_in if build_in_map else 0)) * (k_total // ks[2])
  bitmap = (1.0 * (in_space + out_space) + 10.0 * n_in + 4.0 * row_fetches
            + 2.0 * out_capacity * math.log2(max(out_space // 32, 2)))
  cand = n_in * reach
  unique = min(_sort_cost(cand, cand, out_capacity), _grid_cost(out_space, cand))
  candidates = 3.0 * (unique + 20.0 * cand) + 2.0 * out_capacity * k_total
  return bitmap < candidates


@functools.partial(jax.jit, static_argnums=tuple(range(1, 9)))
def _build_conv_map_bitmap(coords, shape, batch_size, ks, ss, ps, ds, out_capacity, build_in_map):
  _key_space(batch_size, conv_output_shape(shape, ks, ss, ps, ds), "build_conv_map (output grid)")
  in_space = _key_space(batch_size, shape, "build_conv_map (input grid)")
  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  occ_in = _occupancy(linearize(c, shape, batch_size), in_space).reshape((batch_size,) + shape)
  in_bm = _Bitmap(_pack_rows(occ_in), shape[2])
  in_rank = in_bm.rank_rc(*_coords_rc(c, shape), active)
  return _bitmap_conv_map(occ_in, in_bm, in_bm.rows_by_rank(in_rank), c, ks, ss, ps, ds,
                          out_capacity, build_in_map)


def _coords_rc(c: jax.Array, shape: Triple):
  """Bitmap (row, col) of coordinates [N, 4] on a grid ``shape`` (batch -1 is clamped to 0)."""
  b = jnp.maximum(c[:, 0], 0)
  return (b * shape[0] + c[:, 1]) * shape[1] + c[:, 2], c[:, 3]


def _rc_coords(row: jax.Array, col: jax.Array, valid: jax.Array, shape: Triple) -> jax.Array:
  """[N, 4] coordinates of bitmap (row, col) on a grid ``shape``; (-1, 0, 0, 0) where not valid."""
  i1 = lax.rem(row, jnp.int32(shape[1]))  # row >= 0: truncating = floor division
  i0 = lax.rem(lax.div(row, jnp.int32(shape[1])), jnp.int32(shape[0]))
  b = lax.div(row, jnp.int32(shape[0] * shape[1]))
  return jnp.where(valid[:, None], jnp.stack([b, i0, i1, col], axis=1),
                   jnp.array([-1, 0, 0, 0], jnp.int32))


def _bitmap_conv_map(occ_in: jax.Array, in_bm: _Bitmap, row_of_rank: jax.Array | None,
                     c: jax.Array, ks: Triple, ss: Triple, ps: Triple, ds: Triple, out_capacity: int,
                     build_in_map: bool) -> KernelMap:
  """Regular-conv kernel map from the input occupancy [B, D0, D1, D2] and its bitmap.

  ``row_of_rank`` maps an input's rank in the bitmap to its row (None: rows are in rank order);
  ``c`` [N_in, 4] are the input coordinates (only used for ``in_map``).
  """
  batch_size, shape = occ_in.shape[0], tuple(occ_in.shape[1:])
  out_shape = conv_output_shape(shape, ks, ss, ps, ds)
  n_in = c.shape[0]
  k_total = int(np.prod(ks))
  out_bm = _Bitmap(_dilated_bitmap(occ_in, ks, ss, ps, ds, out_shape), out_shape[2])
  num_sites = out_bm.total
  row, col, valid = out_bm.select(out_capacity)  # row = (b*O0 + o0)*O1 + o1, col = o2
  out_coords = _rc_coords(row, col, valid, out_shape)

  # out_map[o, k]: the input at o*s - p + k*d (per axis), found by its rank in the input bitmap
  # (one fetch of the input row per (o, k0, k1) serves the K2 taps along the last axis).
  idx, ok = [], []
  for a in range(3):
    i = out_coords[:, a + 1, None] * ss[a] - ps[a] + jnp.arange(ks[a], dtype=jnp.int32) * ds[a]
    idx.append(i)
    ok.append((i >= 0) & (i < shape[a]))
  rank = in_bm.rank_rows(*_grid_rows(out_coords[:, 0], idx, ok, valid, shape))
  if row_of_rank is not None:
    rank = jnp.where(rank >= 0, _take(row_of_rank, jnp.maximum(rank, 0)), -1)
  out_map = rank.reshape(out_capacity, k_total)

  in_map = None
  if build_in_map:  # in_map[n, k]: the output at (i + p - k*d)/s when integral and inside the grid
    idx, ok = [], []
    for a in range(3):
      num = c[:, a + 1, None] + ps[a] - jnp.arange(ks[a], dtype=jnp.int32) * ds[a]
      if ss[a] == 1:
        o, hit = num, num >= 0
      else:  # truncating division on clamped values: no sign fix-ups (num < 0 is invalid anyway)
        nn = jnp.maximum(num, 0)
        o = lax.div(nn, jnp.int32(ss[a]))
        hit = (num >= 0) & (lax.rem(nn, jnp.int32(ss[a])) == 0)
      idx.append(o)
      ok.append(hit & (o < out_shape[a]))
    row, col, okk = _grid_rows(jnp.maximum(c[:, 0], 0), idx, ok, c[:, 0] >= 0, out_shape)
    if ss[2] == 1 and ds[2] == 1:
      # A regular conv's outputs o2 = i2 + p - k2 that lie in the grid all exist (each window holds
      # input i) and are consecutive in one bitmap row, so their ranks are consecutive: one query
      # for the highest, the K2 - 1 others follow (this layout is also what makes it exact).
      top = jnp.minimum(c[:, 3] + ps[2], out_shape[2] - 1)[:, None, None, None]
      r_top = out_bm.rank_rc(*jnp.broadcast_arrays(row, top, jnp.any(okk, axis=-1, keepdims=True)))
      rank = jnp.where(okk & (r_top >= 0), r_top - (top - col), -1)
    else:
      rank = out_bm.rank_rows(row, col, okk)
    in_map = jnp.where(rank < out_capacity, rank, -1).reshape(n_in, k_total)
  overflow = jnp.maximum(num_sites - out_capacity, 0).astype(jnp.int32)
  return KernelMap(out_coords=out_coords, out_map=out_map.astype(jnp.int32), in_map=in_map,
                   num_sites=num_sites, overflow=overflow)


def _grid_rows(batch: jax.Array, idx: list[jax.Array], ok: list[jax.Array], row_ok: jax.Array,
               shape: Triple):
  """Like `_grid_rc`, but row [R, K0, K1, 1] and col [R, 1, 1, K2] unbroadcast (for `rank_rows`)."""
  b = batch[:, None, None, None]
  row = (b * shape[0] + idx[0][:, :, None, None]) * shape[1] + idx[1][:, None, :, None]
  col = idx[2][:, None, None, :]
  valid = (row_ok[:, None, None, None] & ok[0][:, :, None, None] & ok[1][:, None, :, None]
           & ok[2][:, None, None, :])
  return row, col, valid


@functools.partial(jax.jit, static_argnums=tuple(range(1, 10)))
def _build_conv_map(coords, shape, batch_size, ks, ss, ps, ds, out_capacity, method, build_in_map):
  out_shape = conv_output_shape(shape, ks, ss, ps, ds)
  out_space = _key_space(batch_size, out_shape, "build_conv_map (output grid)")
  _key_space(batch_size, shape, "build_conv_map (input grid)")
  n_in = coords.shape[0]
  k_total = int(np.prod(ks))
  all_unit = all(s == 1 for s in ss)
  tables = [_axis_tables(ks[a], ss[a], ds[a]) for a in range(3)]
  ms = tuple(t[4] for t in tables)

  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  b = jnp.where(active, c[:, 0], 0)
  cc, cls = [], []
  for a in range(3):
    v = c[:, a + 1] + ps[a]
    cc.append(v // ss[a])
    cls.append(jnp.asarray(tables[a][0])[v % ss[a]])
  cc = jnp.stack(cc, axis=1)  # [N_in, 3] coarse cell
  cls = jnp.stack(cls, axis=1)  # [N_in, 3] residue class (-1: reaches nothing)
  reach = active & jnp.all(cls >= 0, axis=1)

  # Merge inputs that reach the same outputs (same batch, coarse cell and residue classes).
  n_cls = tuple(t[3] for t in tables)
  c_ext = tuple((shape[a] - 1 + ps[a]) // ss[a] + 1 for a in range(3))
  g_shape = tuple(c_ext[a] * n_cls[a] for a in range(3))
  g_space = batch_size * int(np.prod(g_shape))
  merge = (not all_unit) and g_space <= INT32_MAX - 1
  if merge:
    gcoord = jnp.stack([b] + [cc[:, a] * n_cls[a] + jnp.maximum(cls[:, a], 0) for a in range(3)], 1)
    gkeys = jnp.where(reach, linearize(gcoord, g_shape, batch_size), INT32_MAX)
    ukeys, _, group = unique_keys(gkeys, g_space, n_in, method)  # capacity n_in: never overflows
    gc = delinearize(ukeys, g_shape)
    g_valid = gc[:, 0] >= 0
    g_b = gc[:, 0]
    g_c = jnp.stack([gc[:, a + 1] // n_cls[a] for a in range(3)], 1)
    g_cls = jnp.stack([gc[:, a + 1] % n_cls[a] for a in range(3)], 1)
  else:
    group = jnp.where(reach, jnp.arange(n_in, dtype=jnp.int32), -1)
    g_valid, g_b, g_c, g_cls = reach, b, cc, jnp.maximum(cls, 0)

  # Candidate outputs per group: o = c - J[cls, t] per axis.
  o_ax, ok_ax = [], []
  for a in range(3):
    jt = jnp.asarray(tables[a][1])[g_cls[:, a]]  # [G, M_a]
    o = g_c[:, a:a + 1] - jt
    o_ax.append(o)
    ok_ax.append((jt >= 0) & (o >= 0) & (o < out_shape[a]))
  ok = (g_valid[:, None, None, None] & ok_ax[0][:, :, None, None] & ok_ax[1][:, None, :, None]
        & ok_ax[2][:, None, None, :])
  cand = ((g_b[:, None, None, None] * out_shape[0] + o_ax[0][:, :, None, None]) * out_shape[1]
          + o_ax[1][:, None, :, None]) * out_shape[2] + o_ax[2][:, None, None, :]
  cand = jnp.where(ok, cand, INT32_MAX).astype(jnp.int32).reshape(-1)
  out_keys, num_sites, cand_out = unique_keys(cand, out_space, out_capacity, method)
  cand_out = cand_out.reshape((-1,) + ms)  # [G, M0, M1, M2]

  # Per input: output row and flat kernel offset of each slot.
  in_out = jnp.where((group >= 0)[:, None, None, None], cand_out[jnp.maximum(group, 0)], -1)
  kk = []
  for a in range(3):
    r = (c[:, a + 1] + ps[a]) % ss[a]
    kk.append(jnp.asarray(tables[a][2])[r])  # [N_in, M_a]
  kflat = (kk[0][:, :, None, None] * ks[1] + kk[1][:, None, :, None]) * ks[2] + kk[2][:, None, None, :]
  k_ok = ((kk[0] >= 0)[:, :, None, None] & (kk[1] >= 0)[:, None, :, None]
          & (kk[2] >= 0)[:, None, None, :])
  slot_ok = (in_out >= 0) & k_ok
  rows = jnp.broadcast_to(jnp.arange(n_in, dtype=jnp.int32)[:, None, None, None], in_out.shape)
  out_map = jnp.full((out_capacity, k_total), -1, jnp.int32).at[
      jnp.where(slot_ok, in_out, out_capacity).reshape(-1), jnp.maximum(kflat, 0).reshape(-1)].set(
          rows.reshape(-1), mode="drop")
  in_map = None
  if build_in_map:
    if all_unit and not merge:
      in_map = jnp.where(slot_ok, in_out, -1).reshape(n_in, k_total)  # slot t == offset t
    else:
      in_map = jnp.full((n_in, k_total), -1, jnp.int32).at[
          jnp.where(slot_ok, rows, n_in).reshape(-1), jnp.maximum(kflat, 0).reshape(-1)].set(
              in_out.reshape(-1), mode="drop")
  out_coords = delinearize(out_keys, out_shape)
  overflow = jnp.maximum(num_sites - out_capacity, 0).astype(jnp.int32)
  return KernelMap(out_coords=out_coords, out_map=out_map, in_map=in_map, num_sites=num_sites,
                   overflow=overflow)


# ---------------------------------------------------------------------------------------------------
# Strided convolution as space-to-depth + stride-1 convolution.

@flax.struct.dataclass
class SpaceToDepth:
  """Regrouping of input sites into coarse cells of s0*s1*s2 voxels (see `build_space_to_depth_map`).

  Attributes:
    coords: [N_in, 4] int32 coarse cells (sorted by key, inactive rows last; capacity N_in).
    slot: [N_in] int32 cell_row * s0*s1*s2 + residue of each input, residue (r0*s1 + r1)*s2 + r2 with
      r = (i + p) mod s; -1 for inactive inputs and inputs that reach no output.
    spatial_shape: coarse grid (static).
  """
  coords: jax.Array
  slot: jax.Array
  spatial_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)


def space_to_depth_shape(spatial_shape: Sequence[int], kernel_size: Sequence[int],
                         strides: Sequence[int], padding: Sequence[int]) -> Triple:
  """Coarse grid of `build_space_to_depth_map`: out + K/s - 1 per axis (cells that reach an output)."""
  out = conv_output_shape(spatial_shape, kernel_size, strides, padding, (1, 1, 1))
  return tuple(o + k // s - 1 for o, k, s in zip(out, kernel_size, strides))  # type: ignore


def build_space_to_depth_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                             kernel_size: Sequence[int], strides: Sequence[int],
                             padding: Sequence[int], out_capacity: int, method: str = "auto",
                             build_in_map: bool = False) -> tuple[SpaceToDepth, KernelMap]:
  """A strided conv (kernel divisible by the stride, dilation 1) as a stride-1 conv on coarse cells.

  Input voxel i lies in coarse cell c = (i + p) // s at residue r = (i + p) % s; kernel offset
  k = j*s + r becomes coarse offset j in [0, K/s). Output o of the strided conv is reached exactly by
  the cells o + j, so the output sites are those of a regular stride-1 conv with kernel K/s on the
  coarse grid (`space_to_depth_shape`), and the returned `KernelMap` (over the same output grid and
  rows as `build_conv_map` of the strided conv) indexes coarse rows with prod(K/s) offsets instead of
  prod(K) inputs.

  Args:
    coords: [N_in, 4] int32 unique active sites (batch -1 = inactive).
    spatial_shape, batch_size: input grid and B.
    kernel_size, strides, padding: 3 ints each; kernel_size divisible by strides.
    out_capacity: static number of output rows.
    method: "auto", "sort", "grid" or "bitmap" (identical results).
    build_in_map: also build the coarse input-stationary map.

  Returns:
    (`SpaceToDepth`, `KernelMap` of the coarse stride-1 conv).
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ss, ps = (tuple(int(v) for v in t) for t in (kernel_size, strides, padding))
  if any(k % s for k, s in zip(ks, ss)):
    raise ValueError(f"build_space_to_depth_map: kernel sizes {ks} must be multiples of the strides {ss}")
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  if out_capacity < 1:
    raise ValueError(f"build_space_to_depth_map: out_capacity must be >= 1, got {out_capacity}")
  ext = space_to_depth_shape(shape, ks, ss, ps)
  ms = tuple(k // s for k, s in zip(ks, ss))
  out_shape = conv_output_shape(ext, ms, (1, 1, 1), (0, 0, 0), (1, 1, 1))
  n_in, batch_size = coords.shape[0], int(batch_size)
  if method == "auto":
    method = "bitmap" if _conv_map_prefers_bitmap(n_in, ext, out_shape, batch_size, ms, (1, 1, 1),
                                                  (1, 1, 1), int(out_capacity), build_in_map) else "auto"
  return _build_space_to_depth_map(coords, shape, batch_size, ks, ss, ps, int(out_capacity), method,
                                   bool(build_in_map))


@functools.partial(jax.jit, static_argnums=tuple(range(1, 9)))
def _build_space_to_depth_map(coords, shape, batch_size, ks, ss, ps, out_capacity, method,
                              build_in_map):
  ext = space_to_depth_shape(shape, ks, ss, ps)
  space = _key_space(batch_size, ext, "build_space_to_depth_map (coarse grid)")
  ms = tuple(k // s for k, s in zip(ks, ss))
  unit = (1, 1, 1)
  n_in = coords.shape[0]
  c = coords.astype(jnp.int32)
  v = c[:, 1:] + jnp.asarray(ps, jnp.int32)  # >= 0 on active rows
  cell = lax.div(jnp.maximum(v, 0), jnp.broadcast_to(jnp.asarray(ss, jnp.int32), v.shape))
  res = v - cell * jnp.asarray(ss, jnp.int32)
  inside = (c[:, 0] >= 0) & jnp.all(cell < jnp.asarray(ext, jnp.int32), axis=1)  # others: no output
  ccoords = jnp.concatenate([jnp.where(inside, c[:, 0], -1)[:, None],
                             jnp.where(inside[:, None], cell, 0)], axis=1)
  if method == "bitmap":
    occ = _occupancy(linearize(ccoords, ext, batch_size), space).reshape((batch_size,) + ext)
    bm = _Bitmap(_pack_rows(occ), ext[2])
    group = bm.rank_rc(*_coords_rc(ccoords, ext), inside)  # coarse row = rank: rows sorted by key
    coarse = _rc_coords(*bm.select(n_in), ext)
    kmap = _bitmap_conv_map(occ, bm, None, coarse, ms, unit, (0, 0, 0), unit, out_capacity,
                            build_in_map)
  else:
    uniq, _, group = unique_keys(linearize(ccoords, ext, batch_size), space, n_in, method)
    coarse = delinearize(uniq, ext)
    kmap = build_conv_map(coarse, ext, batch_size, ms, unit, (0, 0, 0), unit, out_capacity, method,
                          build_in_map)
  n_res = int(np.prod(ss))
  slot = jnp.where(group >= 0, group * n_res + (res[:, 0] * ss[1] + res[:, 1]) * ss[2] + res[:, 2], -1)
  return SpaceToDepth(coords=coarse, slot=slot.astype(jnp.int32), spatial_shape=ext), kmap


# ---------------------------------------------------------------------------------------------------
# Submanifold convolution.

def subm_args(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[Triple, Triple]:
  """Checked submanifold (kernel_size, dilation) as int triples: odd kernels, dilation >= 1."""
  ks, ds = tuple(int(v) for v in kernel_size), tuple(int(v) for v in dilation)
  if any(k % 2 == 0 or k < 1 for k in ks):
    raise ValueError(f"build_subm_map: submanifold kernel_size must be odd, got {ks}")
  if any(d < 1 for d in ds):
    raise ValueError(f"build_subm_map: dilation must be >= 1, got {ds}")
  return ks, ds


def build_subm_map(coords: jax.Array, spatial_shape: Sequence[int], batch_size: int,
                   kernel_size: Sequence[int], dilation: Sequence[int],
                   method: str = "auto") -> KernelMap:
  """Kernel map of a submanifold conv (spconv ``SubMConv3d``): output sites = input sites.

  ``out_map[n, k]`` is the row of the input at coords[n] + (k - (K-1)/2)*d, or -1. The map is symmetric
  (offset k <-> K-1-k), so ``in_map`` is ``out_map`` with the offset axis reversed.

  Args:
    coords: [N, 4] int32 unique active sites (batch -1 = inactive).
    spatial_shape: (D0, D1, D2).
    batch_size: B.
    kernel_size: 3 odd ints.
    dilation: 3 ints >= 1.
    method: "sort", "grid", "bitmap" or "auto" (identical results).
  """
  shape = tuple(int(v) for v in spatial_shape)
  ks, ds = subm_args(kernel_size, dilation)
  if method not in METHODS:
    raise ValueError(f"kernel-map method must be one of {METHODS}, got {method!r}")
  n, k_total = coords.shape[0], int(np.prod(ks))
  space = int(batch_size) * int(np.prod(shape))
  if method == "auto" and space <= BITMAP_MAX_VOXELS and (
      1.0 * space + 10.0 * n + 4.0 * n * (k_total // ks[2]) < _sort_cost(n, n * k_total, n)):
    method = "bitmap"
  if method == "bitmap":
    return _build_subm_map_bitmap(coords, shape, int(batch_size), ks, ds)
  return _build_subm_map(coords, shape, int(batch_size), ks, ds, method)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 5)))
def _build_subm_map_bitmap(coords, shape, batch_size, ks, ds):
  """`build_subm_map` by rank queries in the input bitmap (one row fetch per K2 taps)."""
  space = _key_space(batch_size, shape, "build_subm_map")
  n = coords.shape[0]
  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  bm = _Bitmap(_pack_rows(_occupancy(linearize(c, shape, batch_size), space).reshape(
      (batch_size,) + shape)), shape[2])
  row_of_rank = bm.rows_by_rank(bm.rank_rc(*_coords_rc(c, shape), active))
  idx, ok = [], []
  for a in range(3):
    i = c[:, a + 1, None] + (jnp.arange(ks[a], dtype=jnp.int32) - (ks[a] - 1) // 2) * ds[a]
    idx.append(i)
    ok.append((i >= 0) & (i < shape[a]))
  rank = bm.rank_rows(*_grid_rows(jnp.maximum(c[:, 0], 0), idx, ok, active, shape))
  out_map = jnp.where(rank >= 0, _take(row_of_rank, jnp.maximum(rank, 0)), -1).reshape(n, -1)
  return KernelMap(out_coords=c, out_map=out_map, in_map=out_map[:, ::-1],
                   num_sites=jnp.sum(active, dtype=jnp.int32), overflow=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnums=tuple(range(1, 6)))
def _build_subm_map(coords, shape, batch_size, ks, ds, method):
  space = _key_space(batch_size, shape, "build_subm_map")
  n = coords.shape[0]
  c = coords.astype(jnp.int32)
  active = c[:, 0] >= 0
  offs = np.stack(np.meshgrid(*[(np.arange(k) - (k - 1) // 2) * d for k, d in zip(ks, ds)],
                              indexing="ij"), -1).reshape(-1, 3).astype(np.int32)  # [K, 3]
  nb = c[:, None, 1:] + jnp.asarray(offs)[None]  # [N, K, 3]
  inside = active[:, None] & jnp.all((nb >= 0) & (nb < jnp.array(shape, jnp.int32)), axis=-1)
  qk = ((c[:, None, 0] * shape[0] + nb[..., 0]) * shape[1] + nb[..., 1]) * shape[2] + nb[..., 2]
  qk = jnp.where(inside, qk, INT32_MAX).astype(jnp.int32)
  table = linearize(c, shape, batch_size)
  out_map = lookup_keys(table, qk.reshape(-1), space, method).reshape(n, -1)
  zero = jnp.zeros((), jnp.int32)
  return KernelMap(out_coords=c, out_map=out_map, in_map=out_map[:, ::-1], num_sites=jnp.sum(
      active, dtype=jnp.int32), overflow=zero)
