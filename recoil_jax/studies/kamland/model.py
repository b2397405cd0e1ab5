"""KamLAND classifiers: a spherical CNN (KamNet's spherical stage) and a planar CNN baseline.

* :class:`SphericalClassifier` (Cohen et al. arXiv 1801.10130; KamNet arXiv 2203.01870):
  ``sphere`` [B, n_θ, n_φ, C] → S² → SO(3) correlation → [SphericalBatchNorm, ReLU] →
  SO(3) → SO(3) correlations with falling band-limits (KamNet: b = 19 → 14 → 10 → 6 → 2)
  → Haar mean (rotation-invariant features) → dense layers → one logit. KamNet's
  attention ConvLSTM front end (not equivariant) is left out: the time information enters
  as the "early" channel.
* :class:`PlanarClassifier`: the source study's "normal CNN" on the 38 × 38 equiangular map
  ``planar`` [B, 38, 38, C]: 3 × (conv 3 × 3, BatchNorm, ReLU, max-pool 2) → dense → logit.

Both return ``{"logit": [B]}`` (log-odds of 0νββ).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from recoil_jax.ops.sphere import layers


class SphericalClassifier(nn.Module):
  """See the module docstring; ``band_limits[0]`` is the S²→SO(3) output band-limit."""
  features: Sequence[int] = (8, 16, 16)
  band_limits: Sequence[int] = (12, 8, 4)
  N: int = 3
  sampling: str = "dh"
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, batch, train: bool):
    x = batch["sphere"]
    h = layers.S2ToSO3Conv(self.features[0], L_out=self.band_limits[0], N=self.N,
                           sampling=self.sampling)(x)
    h = nn.relu(layers.SphericalBatchNorm(sampling=self.sampling)(h, train))
    for f, L in zip(self.features[1:], self.band_limits[1:]):
      h = layers.SO3ToSO3Conv(f, L_out=L, N_out=min(self.N, L), sampling=self.sampling)(h)
      h = nn.relu(layers.SphericalBatchNorm(sampling=self.sampling)(h, train))
    h = layers.so3_haar_mean(h, self.sampling)
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return {"logit": nn.Dense(1)(h)[:, 0]}


class PlanarClassifier(nn.Module):
  """See the module docstring."""
  features: Sequence[int] = (16, 32, 32)
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, batch, train: bool):
    h = batch["planar"]
    for f in self.features:
      h = nn.Conv(f, (3, 3), padding="SAME")(h)
      h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
      h = nn.max_pool(h, (2, 2), (2, 2))
    h = jnp.reshape(h, (h.shape[0], -1))
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return {"logit": nn.Dense(1)(h)[:, 0]}


MODELS = ("spherical", "planar")
