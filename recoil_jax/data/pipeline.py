"""grain batching shared by every study: random-access training batches and padded eval batches.

Both functions return a ``grain.MapDataset`` whose element ``ds[i]`` is the *local* batch
(the examples of this process) for global step / evaluation batch ``i``: a dict of numpy
arrays with a leading batch axis plus ``mask`` (float32, [B]; 1 = real example,
0 = padding). Iterate with :func:`iterate`, which prefetches on threads.

Sharding over hosts. Global batch ``i`` is a fixed set of ``global_batch_size`` source
indices that depends only on ``seed`` and ``i`` -- never on the number of processes;
process ``p`` of ``P`` takes the ``p``-th contiguous chunk of ``global_batch_size / P``
of them. So every process reads a disjoint, equal-size slice of each batch (and of each
epoch), and the global batch (hence the training trajectory) is the same on 1 or many
hosts. Row ``r`` of the global array built by ``parallel.shard_batch`` is element
``r`` of the global batch.

Training. Epoch ``e`` visits the source in the order of a permutation drawn from
``numpy.random.default_rng([seed, e])``; the ``len(source) % global_batch_size`` examples
left at the end of each epoch are dropped (a different set each epoch). Because batch
``s`` is computed directly from ``s``, resuming at step ``s`` is ``ds[s:]``: the data
position is restored exactly.

Evaluation. Every example is visited once, in source order; the last global batch is
padded with copies of the last example (``mask`` 0), and every process yields the same
number of batches, ``ceil(len(source) / global_batch_size)``.

Sources. :func:`normalise_index` (negative indices, range check naming the source) and
:func:`check_splits` (requested vs available splits) are the checks every study's
random-access source makes (``studies/*/source.py``).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from recoil_jax.tasks import RandomAccessSource

Batch = dict[str, np.ndarray]


def normalise_index(index: int, length: int, name: str) -> int:
  """``index`` of a source of ``length`` examples as an int in [0, length).

  Negative indices count from the end, as for a list.

  Args:
    index: an integer (Python or numpy; not a float or bool).
    length: the source's number of examples.
    name: the source's name for error messages (e.g. ``"train"``).

  Raises:
    TypeError: ``index`` is not an integer.
    IndexError: ``index`` is outside [-length, length); the message names the source.
  """
  if isinstance(index, (bool, np.bool_)):
    raise TypeError(f"{name}: index {index!r} is a bool, expected an integer")
  try:
    i = operator.index(index)
  except TypeError:
    raise TypeError(f"{name}: index {index!r} is a {type(index).__name__}, expected an "
                    "integer") from None
  if i < 0:
    i += length
  if not 0 <= i < length:
    raise IndexError(f"{name}: index {index} out of range for a source of {length} examples")
  return i


def check_splits(available: Sequence[str], requested: Sequence[str] | None,
                 where: str) -> list[str]:
  """The splits to read: ``requested`` (in its order), or all ``available`` if None.

  Args:
    available: the splits the dataset has.
    requested: split names, or None for all of ``available``.
    where: names the dataset in the error (e.g. its folder).

  Raises:
    TypeError: ``requested`` is a single string (a common slip for ``[name]``).
    KeyError: requested splits are missing: "``where``: no split(s) [...]; available [...]".
    ValueError: a split is requested twice.
  """
  available = list(available)
  if requested is None:
    return available
  if isinstance(requested, str):
    raise TypeError(f"{where}: splits must be a sequence of names, got the string "
                    f"{requested!r} (use [{requested!r}])")
  names = list(requested)
  missing = [s for s in names if s not in available]
  if missing:
    raise KeyError(f"{where}: no split(s) {missing}; available {available}")
  repeated = sorted({s for s in names if names.count(s) > 1})
  if repeated:
    raise ValueError(f"{where}: split(s) {repeated} requested more than once")
  return names


def _local_batch_size(global_batch_size: int, process_count: int, name: str) -> int:
  if global_batch_size < 1:
    raise ValueError(f"{name}: global_batch_size must be >= 1, got {global_batch_size}")
  if global_batch_size % process_count:
    raise ValueError(
        f"{name}: global_batch_size={global_batch_size} is not divisible by the number of "
        f"processes ({process_count})")
  return global_batch_size // process_count


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")


def stack_examples(examples: Sequence[Mapping[str, Any]], *, name: str,
                   indices: Sequence[int]) -> Batch:
  """Stacks examples (dicts of arrays) into a batch; errors name the source and index.

  Args:
    examples: the examples, each ``{field: array-like}`` with the same fields and shapes.
    name: the source's name for error messages (e.g. ``"train"``).
    indices: the source indices of ``examples`` for error messages.

  Returns:
    ``{field: np.ndarray [len(examples), ...]}``.
  """
  if not examples:
    raise ValueError(f"{name}: cannot build an empty batch")
  keys = list(examples[0].keys())
  if "mask" in keys:
    raise ValueError(
        f"{name}[{indices[0]}]: examples must not define 'mask' (the pipeline adds it)")
  for ex, i in zip(examples, indices):
    if not isinstance(ex, Mapping):
      raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, expected a dict of arrays")
    if list(ex.keys()) != keys:
      raise ValueError(f"{name}[{i}] has fields {sorted(ex)}, expected {sorted(keys)}")
  batch = {}
  for key in keys:
    values = [np.asarray(ex[key]) for ex in examples]
    shape = values[0].shape
    for v, i in zip(values, indices):
      if v.shape != shape:
        raise ValueError(
            f"{name}[{i}][{key!r}] has shape {v.shape}, but {name}[{indices[0]}] has {shape}; "
            "examples in a batch must have equal shapes (pad them in the source)")
      if v.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}[{i}][{key!r}] has dtype {v.dtype}; only numeric fields are batched")
    batch[key] = np.stack(values)
  return batch


def num_steps_per_epoch(num_examples: int, global_batch_size: int, requested: int = 0) -> int:
  """Steps in one epoch: ``num_examples // global_batch_size`` or ``requested`` if > 0."""
  available = num_examples // global_batch_size
  if available < 1:
    raise ValueError(
        f"train source has {num_examples} examples, fewer than one global batch "
        f"({global_batch_size})")
  if requested < 0 or requested > available:
    raise ValueError(
        f"train.steps_per_epoch={requested} must be in [0, {available}] "
        f"({num_examples} examples // global batch {global_batch_size})")
  return requested or available


def train_batches(source: RandomAccessSource, *, global_batch_size: int, seed: int,
                  process_index: int, process_count: int, num_epochs: int,
                  steps_per_epoch: int = 0) -> grain.MapDataset:
  """Training batches with random access by global step (see module docstring).

  Args:
    source: random-access examples (``len``, ``source[i] -> dict of arrays``).
    global_batch_size: examples per step over all processes.
    seed: shuffling seed (one permutation per epoch, from ``[seed, epoch]``).
    process_index: this process (``jax.process_index()``).
    process_count: number of processes (``jax.process_count()``).
    num_epochs: number of epochs; ``len(ds) = num_epochs * steps_per_epoch``.
    steps_per_epoch: 0 = ``len(source) // global_batch_size``; otherwise the first
      ``steps_per_epoch`` batches of each epoch's permutation.

  Returns:
    A ``grain.MapDataset``; ``ds[s]`` is the local batch for global step ``s``:
    ``{field: [global_batch_size / process_count, ...], "mask": float32 ones}``.
  """
  _check_process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count, "train")
  n = len(source)
  spe = num_steps_per_epoch(n, global_batch_size, steps_per_epoch)
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")

  @functools.lru_cache(maxsize=2)
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)

  def batch_for_step(step: int) -> Batch:
    epoch, k = divmod(int(step), spe)
    start = k * global_batch_size + process_index * local
    idx = permutation(epoch)[start:start + local]
    batch = stack_examples([source[int(i)] for i in idx], name="train", indices=idx)
    batch["mask"] = np.ones((local,), np.float32)
    return batch

  return grain.MapDataset.range(num_epochs * spe).map(batch_for_step)


def eval_batches(source: RandomAccessSource, *, global_batch_size: int, process_index: int,
                 process_count: int, name: str = "eval") -> grain.MapDataset:
  """All examples exactly once, in order, with the last batch padded (see module docstring).

  Args:
    source: random-access examples.
    global_batch_size: examples per evaluation batch over all processes.
    process_index: this process.
    process_count: number of processes.
    name: the split's name, for error messages.

  Returns:
    A ``grain.MapDataset`` of ``ceil(len(source) / global_batch_size)`` local batches of
    ``global_batch_size / process_count`` examples with ``mask`` (float32, 0 = padding).
  """
  _check_process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count, name)
  n = len(source)
  if n < 1:
    raise ValueError(f"evaluation split {name!r} is empty")
  num_batches = math.ceil(n / global_batch_size)

  def batch_at(b: int) -> Batch:
    start = int(b) * global_batch_size + process_index * local
    idx = np.arange(start, start + local)
    real = idx < n
    idx = np.where(real, idx, n - 1)
    batch = stack_examples([source[int(i)] for i in idx], name=name, indices=idx)
    batch["mask"] = real.astype(np.float32)
    return batch

  return grain.MapDataset.range(num_batches).map(batch_at)


def iterate(ds: grain.MapDataset, start: int = 0, *, num_threads: int = 2,
            prefetch: int = 2):
  """Iterates ``ds[start:]`` with ``num_threads`` reader threads and ``prefetch`` batches ahead."""
  if not 0 <= start <= len(ds):
    raise ValueError(f"start={start} outside [0, {len(ds)}]")
  if num_threads < 1 or prefetch < 1:
    return iter(ds[start:])
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds[start:].to_iter_dataset(options))
