"""A tiny synthetic direction-regression task: the trainer's test case and a minimal template.

Each example is a random unit 3-vector ``direction`` (isotropic) and a noisy linear
16-dim embedding of it, ``features = A @ direction + noise`` (``A`` fixed, standard
normal entries; noise Gaussian with ``config.data.noise``). A 2-layer MLP (optionally
with BatchNorm and Dropout, so those trainer paths are exercised) predicts the direction;
the loss is the cosine-similarity loss of the TPC study (its eq. 1; arXiv 2403.15949),
``-cos(pred, true)`` per example (-1 perfect, 0 random). Data are in-memory numpy arrays; nothing is downloaded.

It is also the reference of the task contract (``recoil_jax.tasks``): with
``model.complex_features`` the MLP starts with a complex layer, ``h = Re(x P W)`` with a
fixed complex projection ``P`` in the ``constants`` collection (made at ``init``, never
trained or averaged) and a complex trainable ``W``; ``analyse`` asks ``predict`` for the
one output it needs and writes its file on process 0 (where the trainer runs it).
"""

from __future__ import annotations

import os
from typing import Any, Mapping


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recoil_jax import io
from recoil_jax import tasks
from recoil_jax.data import pipeline

FEATURES = 16


class ArraySource:
  """Random-access source over a dict of equal-length numpy arrays."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource: fields have different lengths {lengths}")
    self._arrays = dict(arrays)
    self._n = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = pipeline.normalise_index(index, self._n, "ArraySource")
    return {k: v[index] for k, v in self._arrays.items()}


def make_split(num: int, *, noise: float, seed: int, split_index: int) -> ArraySource:
  """``num`` examples: ``features`` float32 [16], ``direction`` float32 [3] (unit)."""
  mixing = np.random.default_rng([seed, 0]).standard_normal((FEATURES, 3))
  rng = np.random.default_rng([seed, 1 + split_index])
  d = rng.standard_normal((num, 3))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  x = d @ mixing.T + noise * rng.standard_normal((num, FEATURES))
  return ArraySource({"features": x.astype(np.float32), "direction": d.astype(np.float32)})


def _complex_normal(key, shape, scale: float) -> jax.Array:
  re, im = jax.random.normal(key, (2,) + tuple(shape))
  return (scale * (re + 1j * im) / np.sqrt(2.0)).astype(jnp.complex64)


class ComplexFeatures(nn.Module):
  """``Re(x P W)`` [B, hidden]: a fixed complex projection P (constant), complex weights W."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    projection = self.variable(
        "constants", "projection",
        lambda: _complex_normal(self.make_rng("params"), (x.shape[-1], x.shape[-1]), 1.0))
    w = self.param("w", lambda key, shape: _complex_normal(key, shape, shape[0] ** -0.5),
                   (x.shape[-1], self.hidden))
    return jnp.real(x.astype(jnp.complex64) @ projection.value @ w)


class DirectionMLP(nn.Module):
  """``features`` [B, 16] -> ``direction`` [B, 3] (unit vectors)."""
  hidden: int = 64
  dropout_rate: float = 0.0
  batch_norm: bool = False
  complex_features: bool = False

  @nn.compact
  def __call__(self, batch: Mapping[str, Any], train: bool) -> dict[str, Any]:
    if self.complex_features:
      h = ComplexFeatures(self.hidden)(batch["features"])
    else:
      h = nn.Dense(self.hidden)(batch["features"])
    if self.batch_norm:
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    h = nn.relu(h)
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    v = nn.Dense(3)(h)
    v = v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
    return {"direction": v}


class ToyRegressionTask(tasks.Task):
  """Config fields: ``data.{num_train, num_validation, num_test, noise, seed}``,
  ``model.{hidden, dropout_rate, batch_norm}``."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    d = config.data
    self._splits = {
        name: make_split(num, noise=d.noise, seed=d.seed, split_index=i)
        for i, (name, num) in enumerate(
            [("train", d.num_train), ("validation", d.num_validation), ("test", d.num_test)])
    }

  def build_model(self) -> nn.Module:
    m = self.config.model
    return DirectionMLP(hidden=m.hidden, dropout_rate=m.dropout_rate, batch_norm=m.batch_norm,
                        complex_features=m.complex_features)

  def loss_terms(self, outputs, batch) -> tasks.LossTerms:
    mask = batch["mask"]
    cos = jnp.sum(outputs["direction"] * batch["direction"], axis=-1)
    angle = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
    count = jnp.sum(mask)
    return {"loss": (jnp.sum(-cos * mask), count), "angle_deg": (jnp.sum(angle * mask), count)}

  def train_source(self) -> ArraySource:
    return self._splits["train"]

  def eval_sources(self) -> dict[str, ArraySource]:
    return {"validation": self._splits["validation"], "test": self._splits["test"]}

  def analyse(self, trained: tasks.Trained, workdir: str) -> dict[str, Any]:
    """Median angle between predicted and true direction on ``test``; ``toy_analysis.json``."""
    pred = trained.predict("test", outputs=("direction",), fields=("direction",))
    cos = np.sum(pred["outputs"]["direction"] * pred["direction"], axis=-1)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    result = {"test_median_angle_deg": float(np.median(angle)), "num_test": int(len(angle)),
              "step": trained.step}
    io.write_json_atomic(os.path.join(workdir, "toy_analysis.json"), result)
    return result
