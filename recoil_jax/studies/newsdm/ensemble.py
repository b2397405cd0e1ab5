"""The authors' final model: the mean of the predictions of late checkpoints.

The authors' notebook (``golovart/Napoli_emulsion:NEWSdm/NewsNet70nm/
article_NEWSnet_bayes.ipynb``) does not keep the best checkpoint alone: it averages the
outputs of about ten late checkpoints (those with validation loss ≤ 0.6). Here the
ensemble is the last ``k`` checkpoints that the trainer kept in ``<workdir>/checkpoints``
(``config.analysis.average_last_checkpoints``; the trainer keeps
``train.max_checkpoints_to_keep`` of them, one every ``train.checkpoint_every_steps``),
without the validation-loss filter. Each checkpoint's TrainState is restored onto one
local device without a trainer (as ``recoil_jax.train.load_trained`` does: the state tree
is traced with ``jax.eval_shape``, nothing is initialised or compiled for it), and the
*probabilities* are averaged, as the authors average softmax outputs:

  p̄_sig = mean_k p_sig,k,   score = log p̄_sig − log(1 − p̄_sig),

computed from the per-checkpoint signal logits in float64 with log-sum-exp (p_sig → 1 for
the events that matter at 10⁻⁴ background efficiency, where 1 − p in float32 is 0).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from scipy import special

from recoil_jax import checkpointing
from recoil_jax import config_lib
from recoil_jax import parallel
from recoil_jax.data import pipeline

CHECKPOINTS_DIR = "checkpoints"


def mean_signal_logit(signal_logits: Any) -> np.ndarray:
  """Logit of the mean signal probability over checkpoints: [K, N] logits -> float64 [N].

  ``log mean_k σ(l_k) − log mean_k σ(−l_k)`` (the 1/K cancels), exact for any K ≥ 1: one
  checkpoint gives back its own logits.
  """
  l = np.asarray(signal_logits, np.float64)
  if l.ndim != 2 or l.shape[0] < 1:
    raise ValueError(f"mean_signal_logit: expected [K >= 1, N] logits, got {l.shape}")
  return (special.logsumexp(special.log_expit(l), axis=0)
          - special.logsumexp(special.log_expit(-l), axis=0))


def checkpoint_directory(workdir: str) -> str:
  """``<workdir>/checkpoints``, or the trained run's when ``workdir`` is its evaluation/ folder
  (``config.mode='evaluate'`` writes the analysis into ``<run>/evaluation``)."""
  workdir = os.path.abspath(workdir)
  here = os.path.join(workdir, CHECKPOINTS_DIR)
  parent = os.path.join(os.path.dirname(workdir), CHECKPOINTS_DIR)
  return here if os.path.isdir(here) or not os.path.isdir(parent) else parent


def abstract_state(config, task, model, device: jax.Device) -> Any:
  """Shapes, dtypes and a single-device sharding of the run's TrainState (no compilation)."""
  from recoil_jax import train  # pylint: disable=g-import-not-at-top  (train imports tasks)
  source = task.train_source()
  steps_per_epoch = pipeline.num_steps_per_epoch(
      len(source), config.train.global_batch_size, config.train.steps_per_epoch)
  tx = config_lib.make_optimizer(config.optimizer, steps_per_epoch * config.train.num_epochs)
  example = pipeline.stack_examples([source[0]], name="train", indices=[0])
  example["mask"] = np.ones((1,), np.float32)
  mesh = parallel.make_mesh([device])
  shapes = jax.eval_shape(lambda: train.create_train_state(
      model, tx, example, config.seed, mesh, task.mutable_collections))
  single = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                      shapes)


def late_variables(directory: str, target: Any, k: int) -> list[tuple[int, dict[str, Any]]]:
  """``[(step, variables)]`` of the last ``k`` complete checkpoints in ``directory``, oldest
  first; ``variables`` = ``{"params": ..., **constants, **model_state}`` for ``apply``.

  Raises:
    ValueError: ``k < 1``. FileNotFoundError: fewer than ``k`` checkpoints (the message
      names ``train.max_checkpoints_to_keep`` and ``train.checkpoint_every_steps``).
  """
  if k < 1:
    raise ValueError(f"late_variables: k={k} must be >= 1")
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=None)
  try:
    steps = ckpt.all_steps()
    if len(steps) < k:
      raise FileNotFoundError(
          f"{directory} holds {len(steps)} checkpoint(s) {steps}, fewer than the {k} to "
          "average (config.analysis.average_last_checkpoints): raise "
          "train.max_checkpoints_to_keep or lower train.checkpoint_every_steps")
    out = []
    for step in steps[-k:]:
      state, _ = ckpt.restore(step, target)
      out.append((step, {"params": state.params, **state.constants, **state.model_state}))
  finally:
    ckpt.close()
  return out


def signal_logits(model, variables: Sequence[Mapping[str, Any]], source, *,
                  batch_size: int, name: str = "source") -> np.ndarray:
  """float32 [K, N]: ``outputs["signal_logit"]`` of each variable set over a whole source.

  Events are read once, in order, in batches of ``batch_size`` (the last one padded, so one
  compilation serves every batch); each batch goes through every variable set.
  """
  apply = jax.jit(lambda v, b: model.apply(v, b, train=False)["signal_logit"])
  n = len(source)
  out = np.zeros((len(variables), n), np.float32)
  for start in range(0, n, batch_size):
    idx = list(range(start, min(start + batch_size, n)))
    padded = idx + [idx[-1]] * (batch_size - len(idx))
    batch = pipeline.stack_examples([source[i] for i in padded], name=name, indices=padded)
    batch["mask"] = np.asarray([1.0] * len(idx) + [0.0] * (batch_size - len(idx)),
                               np.float32)
    for j, v in enumerate(variables):
      out[j, start:start + len(idx)] = np.asarray(apply(v, batch))[:len(idx)]
  return out
