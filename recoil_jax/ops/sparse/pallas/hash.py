"""GPU hash table for voxel keys: open addressing, linear probing, Pallas build and lookup kernels.

Keys are the linearised int32 voxel keys of `tensor.linearize` (((b*D0 + i0)*D1 + i1)*D2 + i2);
``EMPTY`` = INT32_MAX marks a free slot and is never a valid key. A table is two int32 arrays of
2**bits slots: ``keys`` and ``values`` (row index, -1 where unset). Load <= 50 % by default.

Insertion is an *ordered* linear-probing insert by scalar ``atomic_min`` eviction (Amble & Knuth's
ordered hash table): a program carries a key from its home slot h(key); ``old = atomic_min(slot,
carried)``; if ``old`` is EMPTY or equal to the carried key the insert ends, if ``old`` is smaller the
carried key moves on to the next slot, and if ``old`` is larger it was evicted and is carried on
instead. Slots only ever decrease, which gives two properties the tests rely on:

* invariant: a key stored at slot p has only smaller keys in the slots [h(key), p) (cyclically); a
  lookup therefore stops at the first slot holding a key >= the query;
* history independence: the final table depends only on the *set* of keys, not on the order of the
  inserts, so the sequential order in which interpret mode runs the programs produces exactly the
  table that any interleaving of concurrent GPU inserts produces (duplicates included).

Why not ``atomic_cas``: the Triton backend's ``atomic_cas`` takes only a shape-() ref, so it cannot
address a table slot, and CAS spin-locks hang (jax-ml/jax#18909). ``atomic_min`` on one scalar slot
is a lock-free read-modify-write and is evaluated exactly in interpret mode.

Values are written in a second kernel (`set_values`): each key finds its slot and stores its value
with a plain masked store. That needs no atomics when the keys are unique (they are: sites of a
`SparseTensor` are unique, and output rows are made unique before their values are set).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from recoil_jax.ops.sparse.pallas import common
from recoil_jax.ops.sparse.pallas.common import FULL, INT32_MAX

EMPTY = INT32_MAX
# 0x9E3779B1 (Knuth's multiplicative hash, 2^32 / golden ratio) as a wrapped int32.
_MULT = np.int32(np.uint32(0x9E3779B1).view(np.int32))
MIN_BITS = 4
INSERT_BLOCK = 32  # keys per program of the scalar insert loop
VECTOR_BLOCK = 256  # queries per program of the vectorised kernels


@flax.struct.dataclass
class HashTable:
  """Open-addressing table of int32 keys -> int32 values.

  Attributes:
    keys: [2**bits] int32 stored keys, EMPTY (INT32_MAX) in free slots.
    values: [2**bits] int32 value per slot, -1 where unset.
  """
  keys: jax.Array
  values: jax.Array

  @property
  def bits(self) -> int:
    return table_bits_of(self.keys.shape[0])


def table_bits(num_keys: int, max_load: float = 0.5) -> int:
  """Smallest ``bits`` with num_keys <= max_load * 2**bits (at least MIN_BITS; always > num_keys)."""
  if not 0.0 < max_load < 1.0:
    raise ValueError(f"table_bits: max_load must lie in (0, 1), got {max_load}")
  need = max(int(np.ceil(max(int(num_keys), 1) / max_load)), int(num_keys) + 1)
  return max(MIN_BITS, (need - 1).bit_length())


def table_bits_of(size: int) -> int:
  bits = int(size).bit_length() - 1
  if size < 1 or (1 << bits) != size:
    raise ValueError(f"hash table size must be a power of two, got {size}")
  return bits


def home_slot(keys: jax.Array, bits: int) -> jax.Array:
  """Home slot of each key: the top ``bits`` bits of key * 0x9E3779B1 (mod 2^32). Works in kernels."""
  return lax.shift_right_logical(keys * _MULT, np.int32(32 - bits))


def find_slots(table_keys_ref, queries: jax.Array, bits: int) -> jax.Array:
  """Vectorised probe (usable inside kernels): slot holding each query key, or -1.

  Args:
    table_keys_ref: ref (or array) of [2**bits] int32 table keys.
    queries: int32 array of any shape; EMPTY entries are not looked up.
    bits: log2 of the table size (static).

  Returns:
    int32 array shaped like ``queries``.
  """
  mask = np.int32((1 << bits) - 1)

  def body(state):
    slot, active, found = state
    stored = table_keys_ref[slot]
    found = jnp.where(active & (stored == queries), slot, found)
    # Ordered table: the query is absent once a larger key (or EMPTY) shows up.
    active = active & (stored < queries)
    return jnp.where(active, (slot + 1) & mask, slot), active, found

  init = (home_slot(queries, bits), queries != EMPTY, jnp.full(queries.shape, -1, jnp.int32))
  return lax.while_loop(lambda s: common.any_true(s[1]), body, init)[2]


# ---------------------------------------------------------------------------------------------------
# Kernels.

def _insert_kernel(keys_ref, table_in_ref, table_ref, *, block: int, bits: int):
  """One program inserts ``block`` keys, one at a time, by scalar atomic_min eviction."""
  del table_in_ref  # aliased with table_ref
  base = pl.program_id(0) * block
  mask = np.int32((1 << bits) - 1)

  def insert_one(j, carry):
    key = keys_ref[base + j]

    def step(state):
      slot, cur, _ = state
      old = pl_triton.atomic_min(table_ref, (slot,), cur)
      done = (old == EMPTY) | (old == cur)
      return (slot + 1) & mask, jnp.maximum(old, cur), done  # carry the larger (evicted) key on

    lax.while_loop(lambda s: jnp.logical_not(s[2]), step, (home_slot(key, bits), key, key == EMPTY))
    return carry

  lax.fori_loop(0, block, insert_one, 0)


def _set_values_kernel(table_keys_ref, keys_ref, values_ref, vin_ref, vout_ref, *, bits: int):
  """Stores each key's value in its slot. Lanes without a slot are masked *and* aimed at a spare
  slot past the table (index 2**bits): the interpreter evaluates a masked scatter as a write of the
  old value, and with several lanes on one index the last write wins, so a masked lane aimed at a
  real slot could undo another lane's store there (a GPU skips masked lanes)."""
  del vin_ref  # aliased with vout_ref
  slots = find_slots(table_keys_ref, keys_ref[...], bits)
  target = jnp.where(slots >= 0, slots, np.int32(1 << bits))
  pl_triton.store(vout_ref.at[target], values_ref[...], mask=slots >= 0)


def _lookup_kernel(table_keys_ref, table_values_ref, queries_ref, out_ref, *, bits: int):
  slots = find_slots(table_keys_ref, queries_ref[...], bits)
  out_ref[...] = jnp.where(slots >= 0, table_values_ref[jnp.maximum(slots, 0)], -1)


# ---------------------------------------------------------------------------------------------------
# Wrappers.

def _check_keys(x: jax.Array, name: str) -> None:
  if x.ndim != 1 or x.dtype != jnp.int32:
    raise ValueError(f"hash.{name}: expected a 1-D int32 array, got {x.dtype}{list(x.shape)}")


@functools.partial(jax.jit, static_argnames=("bits", "interpret", "block"))
def insert_keys(keys: jax.Array, *, bits: int, interpret: bool = False,
                block: int = INSERT_BLOCK) -> jax.Array:
  """Builds the key array of a table holding the distinct keys of ``keys``.

  Args:
    keys: [M] int32 keys; duplicates are stored once; EMPTY entries are skipped.
    bits: log2 of the table size; must satisfy 2**bits > number of distinct keys (use `table_bits`).
    interpret: run the Pallas interpreter (CPU tests).
    block: keys per program (power of two).

  Returns:
    [2**bits] int32 table keys (EMPTY in free slots), independent of the order of ``keys``.
  """
  _check_keys(keys, "insert_keys")
  m = round_up_block(keys.shape[0], block)
  keys = common.pad_axis(keys, m, value=EMPTY)
  table = jnp.full((1 << bits,), EMPTY, jnp.int32)
  return common.call(
      functools.partial(_insert_kernel, block=block, bits=bits),
      out_shape=jax.ShapeDtypeStruct(table.shape, jnp.int32), grid=(m // block,),
      in_specs=[FULL, FULL], out_specs=FULL, input_output_aliases={1: 0},
      interpret=interpret, name="sparse_hash_insert", num_warps=1)(keys, table)


def round_up_block(n: int, block: int) -> int:
  if block < 1 or block & (block - 1):
    raise ValueError(f"block size must be a power of two, got {block}")
  return max(common.round_up(n, block), block)


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def set_values(table_keys: jax.Array, keys: jax.Array, values: jax.Array, *,
               interpret: bool = False, block: int = VECTOR_BLOCK) -> jax.Array:
  """Values array of a table: ``values[i]`` stored in the slot of ``keys[i]`` (-1 elsewhere).

  Args:
    table_keys: [S] int32 from `insert_keys`.
    keys: [M] int32 unique keys (those not in the table, and EMPTY, are ignored).
    values: [M] int32.

  Returns:
    [S] int32.
  """
  _check_keys(keys, "set_values")
  _check_keys(values, "set_values")
  if keys.shape != values.shape:
    raise ValueError(f"hash.set_values: keys {keys.shape} and values {values.shape} differ in shape")
  bits = table_bits_of(table_keys.shape[0])
  m = round_up_block(keys.shape[0], block)
  keys = common.pad_axis(keys, m, value=EMPTY)
  values = common.pad_axis(values, m, value=-1)
  out = jnp.full((table_keys.shape[0] + 1,), -1, jnp.int32)  # + the spare slot
  out = common.call(
      functools.partial(_set_values_kernel, bits=bits),
      out_shape=jax.ShapeDtypeStruct(out.shape, jnp.int32), grid=(m // block,),
      in_specs=[FULL, common.row_block(block), common.row_block(block), FULL], out_specs=FULL,
      input_output_aliases={3: 0}, interpret=interpret, name="sparse_hash_set_values")(
          table_keys, keys, values, out)
  return out[:-1]


def build_table(keys: jax.Array, values: jax.Array | None = None, *, bits: int | None = None,
                interpret: bool = False) -> HashTable:
  """Table of unique ``keys`` -> ``values`` (default: the row index 0..M-1). EMPTY keys are skipped."""
  _check_keys(keys, "build_table")
  if values is None:
    values = jnp.arange(keys.shape[0], dtype=jnp.int32)
  if bits is None:
    bits = table_bits(keys.shape[0])
  table_keys = insert_keys(keys, bits=bits, interpret=interpret)
  return HashTable(keys=table_keys, values=set_values(table_keys, keys, values, interpret=interpret))


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def lookup(table: HashTable, queries: jax.Array, *, interpret: bool = False,
           block: int = VECTOR_BLOCK) -> jax.Array:
  """Value of each query key, -1 when absent (or when the query is EMPTY).

  Args:
    table: a `HashTable`.
    queries: [Q] int32 keys.

  Returns:
    [Q] int32.
  """
  _check_keys(queries, "lookup")
  q = queries.shape[0]
  m = round_up_block(q, block)
  padded = common.pad_axis(queries, m, value=EMPTY)
  out = common.call(
      functools.partial(_lookup_kernel, bits=table.bits),
      out_shape=jax.ShapeDtypeStruct((m,), jnp.int32), grid=(m // block,),
      in_specs=[FULL, FULL, common.row_block(block)], out_specs=common.row_block(block),
      interpret=interpret, name="sparse_hash_lookup")(table.keys, table.values, padded)
  return out[:q]
