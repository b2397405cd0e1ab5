"""Direction heads on S² and their losses: one table, one owner of each head name.

A head maps features ``h`` float32 [B, F] to a dict of outputs with a leading batch axis:

* ``"cosine"`` (homoscedastic): ``pred_direction`` [B, 3] (unit); loss = cosine-similarity
  loss ``-μ̂·y`` (the source study's eq. 1; arXiv 2403.15949).
* ``"vmf"`` (heteroscedastic): ``pred_direction`` and ``kappa`` [B] (> 0); loss = the von
  Mises–Fisher negative log-likelihood (the source study's eq. 2; arXiv 2403.15949).
* ``"kent"``: ``pred_direction`` (= γ₁), ``kappa``, ``beta`` [B] and ``frame`` [B, 3, 3]
  (rows γ₁, γ₂, γ₃); loss = the Kent (FB5) negative log-likelihood (Kent 1982), the
  source study's suggested extension.

:data:`HEADS` is the only place a head name is interpreted: models build their head with
``head_spec(name).build(h)`` inside their ``nn.compact`` call (sub-modules are named
``direction`` / ``kappa`` / ``kent`` in the caller's scope), tasks take the training
objective from ``head_spec(name).nll`` and ask ``.heteroscedastic`` whether a κ exists.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from recoil_jax.losses import direction as direction_losses

Outputs = Mapping[str, jax.Array]


def _normalise(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


class DirectionHead(nn.Module):
  """Dense(200) ReLU → Dense(50) tanh → Dense(3) → unit vector [B, 3]."""

  @nn.compact
  def __call__(self, h):
    h = nn.relu(nn.Dense(200)(h))
    h = jnp.tanh(nn.Dense(50)(h))
    return _normalise(nn.Dense(3)(h))


class ConcentrationHead(nn.Module):
  """Dense(200) ReLU → Dense(50) ReLU → Dense(n) → softplus (+ floor): positive [B, n]."""

  num_outputs: int = 1
  floor: float = 1e-6

  @nn.compact
  def __call__(self, h):
    h = nn.relu(nn.Dense(200)(h))
    h = nn.relu(nn.Dense(50)(h))
    return nn.softplus(nn.Dense(self.num_outputs)(h)) + self.floor


class KentHead(nn.Module):
  """Kent (FB5) parameters: a frame from 6 numbers (Gram–Schmidt), κ > 0, 0 < 2β < 0.8κ."""

  @nn.compact
  def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
    g = nn.relu(nn.Dense(200, name="frame_hidden")(h))
    g = jnp.tanh(nn.Dense(50, name="frame_hidden2")(g))
    frame = direction_losses.orthonormal_frame(nn.Dense(6, name="frame")(g))  # rows γ1..γ3
    k = nn.relu(nn.Dense(200, name="concentration_hidden")(h))
    k = nn.relu(nn.Dense(50, name="concentration_hidden2")(k))
    raw = nn.Dense(2, name="concentration")(k)
    # 2β/κ < KENT_MAX_ELLIPTICITY < 1: unimodal, and the normaliser series converges.
    kappa, beta = direction_losses.kent_parameters(raw[:, 0], raw[:, 1])
    return {"pred_direction": frame[:, 0], "kappa": kappa + 1e-6, "beta": beta,
            "frame": frame}


def _build_cosine(h: jax.Array) -> dict[str, jax.Array]:
  return {"pred_direction": DirectionHead(name="direction")(h)}


def _build_vmf(h: jax.Array) -> dict[str, jax.Array]:
  return {"pred_direction": DirectionHead(name="direction")(h),
          "kappa": ConcentrationHead(1, name="kappa")(h)[:, 0]}


def _build_kent(h: jax.Array) -> dict[str, jax.Array]:
  return KentHead(name="kent")(h)


def _cosine_nll(out: Outputs, y: jax.Array) -> jax.Array:
  return direction_losses.cosine_similarity_loss(out["pred_direction"], y)


def _vmf_nll(out: Outputs, y: jax.Array) -> jax.Array:
  return direction_losses.vmf_nll(out["pred_direction"], out["kappa"], y)


def _kent_nll(out: Outputs, y: jax.Array) -> jax.Array:
  f = out["frame"]
  return direction_losses.kent_nll(f[:, 0], f[:, 1], f[:, 2], out["kappa"], out["beta"], y)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """One direction head.

  Attributes:
    name: the config name (``config.model.head``).
    build: ``build(h [B, F]) -> outputs``; call inside a module's ``nn.compact`` method.
    nll: ``nll(outputs, y [B, 3]) -> [B]``, the training objective per example.
    heteroscedastic: whether the head predicts a concentration ``kappa``.
    description: a few words for tables and plots.
  """
  name: str
  build: Callable[[jax.Array], dict[str, jax.Array]]
  nll: Callable[[Outputs, jax.Array], jax.Array]
  heteroscedastic: bool
  description: str


HEADS: dict[str, HeadSpec] = {
    "cosine": HeadSpec("cosine", _build_cosine, _cosine_nll, False,
                       "homoscedastic (cosine-similarity loss)"),
    "vmf": HeadSpec("vmf", _build_vmf, _vmf_nll, True, "heteroscedastic (von Mises–Fisher)"),
    "kent": HeadSpec("kent", _build_kent, _kent_nll, True, "heteroscedastic (Kent / FB5)"),
}


def head_spec(name: str, key: str = "model.head") -> HeadSpec:
  """The :class:`HeadSpec` called ``name``; ``key`` names the config field in errors."""
  if name not in HEADS:
    raise ValueError(f"config.{key}={name!r} is not a direction head; known: {sorted(HEADS)}")
  return HEADS[name]
