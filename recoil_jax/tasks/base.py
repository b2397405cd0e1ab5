"""The contract between a study (a *task*) and the shared trainer.

A task turns a config into four things the trainer needs and nothing more:

* ``model``: a Flax Linen module called as ``model.apply(variables, batch, train=...)``
  on a *local* batch (the examples of one device); it returns a dict of arrays with a
  leading batch axis.
* ``loss_terms(outputs, batch)``: per-device sums and counts, ``{name: (sum, count)}``.
  The key ``"loss"`` is the training objective. The trainer all-reduces sums and counts
  over devices and hosts, so the global value is ``psum(sum) / psum(count)``: exact under
  padding (``batch["mask"]`` is 0 for padded examples) and under any sharding.
* data: random-access sources (``len(src)``, ``src[i] -> dict of numpy arrays``) for
  training and for each named evaluation split (``"validation"`` drives early stopping).
* ``analyse(predict, workdir)``: the study's final analysis (figures, tables) from a
  prediction function over a whole split (best weights, padding removed, source order):
  ``predict(split, fields=None) -> {"outputs": {name: [N, ...]}, field: [N, ...], ...}``
  where ``fields`` selects the example fields returned beside the outputs (None = all).

Batches are dicts of numpy arrays with a leading batch axis. The pipeline adds
``batch["mask"]`` (float32, [B]): 1 for real examples, 0 for padding in the last
evaluation batch.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Protocol

import flax.linen as nn
import jax
import ml_collections

Batch = Mapping[str, Any]
LossTerms = dict[str, tuple[jax.Array, jax.Array]]
PredictFn = Callable[..., dict[str, Any]]


class RandomAccessSource(Protocol):
  """What grain's ``MapDataset.source`` accepts: ``len`` and integer indexing."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class Task(abc.ABC):
  """One study's dataset, model, loss and analysis, built from a config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    """The Flax Linen module; ``apply(variables, batch, train=bool)`` -> dict of outputs."""

  @abc.abstractmethod
  def loss_terms(self, outputs: Mapping[str, jax.Array], batch: Batch) -> LossTerms:
    """Per-device ``{name: (sum, count)}``; must contain ``"loss"``; honours ``batch["mask"]``."""

  @abc.abstractmethod
  def train_source(self) -> RandomAccessSource:
    """Training examples (the trainer shards them over hosts and shuffles per epoch)."""

  @abc.abstractmethod
  def eval_sources(self) -> dict[str, RandomAccessSource]:
    """Named evaluation splits; ``"validation"`` is used for early stopping."""

  def analyse(self, predict: PredictFn, workdir: str) -> dict[str, Any]:
    """Final analysis after training; writes plots/tables into ``workdir``. Default: none."""
    del predict, workdir
    return {}
