"""The contract between a study (a *task*) and the shared trainer, and how tasks are found.

A study lives in ``recoil_jax/studies/<name>/``; ``config.task = "<name>"`` selects the one
:class:`Task` subclass defined in ``recoil_jax.studies.<name>.task`` (a dotted module path,
``config.task = "mypackage.mystudy.task"``, selects a study outside the package). Adding a
study edits no shared file.

A task turns a config into what the trainer needs and nothing more:

* ``build_model()``: a Flax Linen module called as ``model.apply(variables, batch,
  train=...)`` on a *local* batch (the examples of one device); it returns a dict of
  arrays with a leading batch axis.
* ``mutable_collections``: the Flax collections that are training *state* (default
  ``("batch_stats",)``): updated by ``apply(..., mutable=...)`` in training steps and
  averaged over devices (``pmean``; integer leaves ``pmax``). Every other non-``params``
  collection the model creates at ``init`` (precomputed tables, complex constants) is a
  *constant*: checkpointed, handed to ``apply`` unchanged, never averaged or updated.
* ``loss_terms(outputs, batch)``: per-device sums and counts, ``{name: (sum, count)}``.
  The key ``"loss"`` is the training objective. The trainer all-reduces sums and counts
  over devices and hosts, so the global value is ``psum(sum) / psum(count)``: exact under
  padding (``batch["mask"]`` is 0 for padded examples) and under any sharding.
* data: random-access sources (``len(src)``, ``src[i] -> dict of numpy arrays``) for
  training and for each named evaluation split (``"validation"`` drives early stopping).
* ``validate()``: checks every path and choice the run will need (input files, the
  workdirs an analysis reads, names of heads and losses) *before* any data is built or
  any step is taken, raising an error that names the config key. Default: nothing.
* ``analyse(trained, workdir)``: the study's final analysis (figures, tables). It runs on
  **process 0 only**, after the final evaluation, and is the only place a task writes
  files; it gets a :class:`Trained` bundle bound to the best weights:
  ``trained.predict(split, outputs=None, fields=None)`` over a whole split and
  ``trained.apply(batch)`` for any batch (event displays, scans, other data).

Batches are dicts of numpy arrays with a leading batch axis. The pipeline adds
``batch["mask"]`` (float32, [B]): 1 for real examples, 0 for padding in the last
evaluation batch.

Complex-valued parameters (spectral filters) are trained as optax expects: the trainer
differentiates the real loss with ``jax.grad``, which returns the conjugate of
∂L/∂z for a complex leaf ``z``; ``z ← z − lr · conj(∂L/∂z)`` is steepest descent
(``tests/test_train.py`` checks the direction on a complex parameter).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import inspect
from typing import Any, Callable, Mapping, Protocol, Sequence

import flax.linen as nn
import jax
import ml_collections

Batch = Mapping[str, Any]
LossTerms = dict[str, tuple[jax.Array, jax.Array]]
PredictFn = Callable[..., dict[str, Any]]
STUDIES_PACKAGE = "recoil_jax.studies"


class RandomAccessSource(Protocol):
  """What grain's ``MapDataset.source`` accepts: ``len`` and integer indexing."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Trained:
  """The best weights of a run, bound for analysis (process 0, its local devices).

  Attributes:
    model: the task's Flax module.
    variables: ``{"params": ..., **collections}`` on process 0's first local device.
    step: the training step these weights come from.
    predict: ``predict(split, outputs=None, fields=None) -> {"outputs": {name: [N, ...]},
      field: [N, ...], ...}`` over a whole evaluation split in source order, padding
      removed; ``outputs`` selects model outputs (None = all), ``fields`` the example
      fields returned beside them (None = all, ``()`` = none).
    apply: ``apply(batch) -> {name: np.ndarray}``: the model with these weights
      (``train=False``, jitted) on a host batch of any size (dict of numpy arrays with a
      leading batch axis; ``mask`` is added when absent).
  """
  model: nn.Module
  variables: Mapping[str, Any]
  step: int
  predict: PredictFn
  apply: Callable[[Mapping[str, Any]], dict[str, Any]]


class Task(abc.ABC):
  """One study's dataset, model, loss and analysis, built from a config."""

  #: Flax collections that are training state (updated and averaged); others are constants.
  mutable_collections: tuple[str, ...] = ("batch_stats",)
  #: Splits whose loss and metrics the trainer computes with the best weights at the end
  #: (``final_metrics.json``); None = every split of :meth:`eval_sources`. A task whose
  #: analysis predicts a large split anyway (e.g. 10⁵ streamed test events) leaves it out
  #: here, so that each of its events is predicted once.
  final_evaluation_splits: tuple[str, ...] | None = None

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def validate(self) -> None:
    """Checks the paths and choices of the config before any data is built. Default: none."""

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

  def analyse(self, trained: Trained, workdir: str) -> dict[str, Any]:
    """Final analysis on process 0; writes plots/tables into ``workdir``. Default: none."""
    del trained, workdir
    return {}


def study_names() -> list[str]:
  """The studies shipped in ``recoil_jax/studies/`` (folders with a ``task.py``)."""
  import os  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(__file__), "studies")
  return sorted(d for d in os.listdir(root)
                if os.path.isfile(os.path.join(root, d, "task.py")))


def task_module_name(name: str) -> str:
  """``"<name>"`` -> ``"recoil_jax.studies.<name>.task"``; a dotted path is returned as is."""
  return name if "." in name else f"{STUDIES_PACKAGE}.{name}.task"


def get_task_class(name: str) -> type[Task]:
  """The one :class:`Task` subclass defined in the task module of study ``name``."""
  if not name:
    raise KeyError(f"config.task is empty; studies: {study_names()}")
  module_name = task_module_name(name)
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name is not None and module_name.startswith(e.name):
      raise KeyError(f"Unknown task {name!r} (config.task): no module {module_name}; "
                     f"studies: {study_names()}") from None
    raise
  found = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
           if issubclass(cls, Task) and cls.__module__ == module.__name__
           and not inspect.isabstract(cls)]
  if len(found) != 1:
    raise TypeError(f"Task {name!r}: {module_name} must define exactly one concrete Task "
                    f"subclass, found {[c.__name__ for c in found]}")
  return found[0]


def get_task(config: ml_collections.ConfigDict) -> Task:
  """Builds the task named by ``config.task`` from the whole config."""
  return get_task_class(config.task)(config)


def split_collections(variables: Mapping[str, Any], mutable: Sequence[str]
                      ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
  """``variables`` -> ``(params, state, constants)`` by the task's mutable collections."""
  variables = dict(variables)
  params = variables.pop("params")
  state = {k: v for k, v in variables.items() if k in mutable}
  constants = {k: v for k, v in variables.items() if k not in mutable}
  return params, state, constants
