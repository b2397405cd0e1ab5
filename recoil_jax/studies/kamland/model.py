"""KamLAND models: spherical CNN (classifier and direction), planar CNN, PMT-graph network.

* :class:`SphericalClassifier` (Cohen et al. arXiv 1801.10130; KamNet arXiv 2203.01870):
  ``sphere`` [B, n_θ, n_φ, C] → S² → SO(3) correlation → [SphericalBatchNorm, ReLU] →
  SO(3) → SO(3) correlations with falling band-limits (KamNet: b = 19 → 14 → 10 → 6 → 2)
  → Haar mean (rotation-invariant features) → dense layers → one logit. KamNet's
  attention ConvLSTM front end (not equivariant) is left out: the time information enters
  as the "early" channel.
* :class:`SphericalDirection`: the same spherical trunk, then the source study's "pooling +
  dense" route: the last SO(3) map [B, 2N−1, n_β, n_α, C] is averaged over γ (pooling
  onto S², where a direction lives) and flattened into a dense layer, then a direction
  head from ``recoil_jax.nn.direction_heads`` (``head``: "vmf" gives ``pred_direction``
  [B, 3] and ``kappa`` [B]). The flattening ties features to grid positions, so this
  read-out is not equivariant (the trunk is).
* :class:`PlanarClassifier`: the source study's "normal CNN" on the 38 × 38 equiangular map
  ``planar`` [B, 38, 38, C]: 3 × (conv 3 × 3, BatchNorm, ReLU, max-pool 2) → dense → logit.
* :class:`GraphClassifier`: a graph network (jraph) on the PMT graph: nodes are the P PMTs
  with features ``nodes`` [B, P, C] (hit counts per channel), edges join each PMT to its
  ``k`` nearest PMTs (by angle seen from the detector centre) with Gaussian radial-basis
  features of the angular distance; message passing (edge MLP on [edge, sender,
  receiver], node MLP on [node, Σ incoming]), then mean and max over nodes → dense →
  logit. Nothing depends on the order of the PMTs (``tests/test_kamland_graph.py``) nor
  on absolute positions (only angular distances enter).

Classifiers return ``{"logit": [B]}`` (log-odds of 0νββ) when ``num_classes == 1`` and
``{"logits": [B, num_classes]}`` otherwise (the spherical digits benchmark).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import jraph
import numpy as np

from recoil_jax.nn import direction_heads
from recoil_jax.ops.sphere import layers


def _logits(h, num_classes: int) -> dict[str, Any]:
  out = nn.Dense(num_classes)(h)
  return {"logit": out[:, 0]} if num_classes == 1 else {"logits": out}


def _spherical_trunk(x, train: bool, *, features, band_limits, N, sampling,
                     relu_oversample=1):
  """S² [B, n_θ, n_φ, C] → SO(3) [B, 2N'−1, n_β, n_α, features[-1]] (call inside compact).

  ``relu_oversample`` > 1 applies each ReLU on a grid that much finer
  (``layers.so3_pointwise``): closer to equivariant, at the cost of two transforms.
  """
  def act(h):
    h = layers.SphericalBatchNorm(sampling=sampling)(h, train)
    return layers.so3_pointwise(h, nn.relu, sampling, relu_oversample)

  h = act(layers.S2ToSO3Conv(features[0], L_out=band_limits[0], N=N, sampling=sampling)(x))
  for f, L in zip(features[1:], band_limits[1:]):
    h = act(layers.SO3ToSO3Conv(f, L_out=L, N_out=min(N, L), sampling=sampling)(h))
  return h


class SphericalClassifier(nn.Module):
  """See the module docstring; ``band_limits[0]`` is the S²→SO(3) output band-limit."""
  features: Sequence[int] = (8, 16, 16)
  band_limits: Sequence[int] = (12, 8, 4)
  N: int = 3
  sampling: str = "dh"
  hidden: Sequence[int] = (64,)
  num_classes: int = 1
  relu_oversample: int = 1

  @nn.compact
  def __call__(self, batch, train: bool):
    h = _spherical_trunk(batch["sphere"], train, features=self.features,
                         band_limits=self.band_limits, N=self.N, sampling=self.sampling,
                         relu_oversample=self.relu_oversample)
    h = layers.so3_haar_mean(h, self.sampling)
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return _logits(h, self.num_classes)


class SphericalDirection(nn.Module):
  """Spherical trunk → mean over γ → flatten → Dense(``hidden``) ReLU → direction head."""
  features: Sequence[int] = (8, 16, 16)
  band_limits: Sequence[int] = (12, 8, 4)
  N: int = 3
  sampling: str = "dh"
  hidden: Sequence[int] = (64,)
  head: str = "vmf"
  relu_oversample: int = 1

  @nn.compact
  def __call__(self, batch, train: bool):
    h = _spherical_trunk(batch["sphere"], train, features=self.features,
                         band_limits=self.band_limits, N=self.N, sampling=self.sampling,
                         relu_oversample=self.relu_oversample)
    h = jnp.mean(h, axis=1)  # Pool over γ: [B, n_β, n_α, C], a map on S².
    h = jnp.reshape(h, (h.shape[0], -1))
    for width in self.hidden:
      h = nn.relu(nn.Dense(width)(h))
    return direction_heads.head_spec(self.head).build(h)


class PlanarClassifier(nn.Module):
  """See the module docstring."""
  features: Sequence[int] = (16, 32, 32)
  hidden: Sequence[int] = (64,)
  num_classes: int = 1

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
    return _logits(h, self.num_classes)


def pmt_graph(pmt_positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Directed k-nearest-neighbour graph of PMTs by angle from the detector centre.

  Args:
    pmt_positions: [P, 3] (any length unit; only directions matter).
    k: neighbours per PMT (< P).

  Returns:
    ``senders`` int32 [P·k], ``receivers`` int32 [P·k] (each PMT receives from its k
    nearest) and ``angle`` float32 [P·k], the angular distance of each edge (rad).
  """
  pos = np.asarray(pmt_positions, np.float64)
  return _pmt_graph_cached(pos.tobytes(), len(pos), int(k))


@functools.lru_cache(maxsize=8)
def _pmt_graph_cached(pos_bytes, num, k):
  if not 1 <= k < num:
    raise ValueError(f"pmt_graph: k={k} must be in [1, {num})")
  u = np.frombuffer(pos_bytes, np.float64).reshape(num, 3)
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  cos = np.clip(u @ u.T, -1, 1)
  np.fill_diagonal(cos, -np.inf)
  # Sorting by (−cos, index of the neighbour's position) would still depend on labels on
  # exact ties; the toy and real PMT layouts have none at float64 precision.
  nbr = np.argsort(-cos, axis=1, kind="stable")[:, :k]  # [P, k]
  receivers = np.repeat(np.arange(num), k)
  senders = nbr.reshape(-1)
  angle = np.arccos(np.clip(cos[receivers, senders], -1, 1))
  return senders.astype(np.int32), receivers.astype(np.int32), angle.astype(np.float32)


class _MLP(nn.Module):
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(self.widths):
      x = nn.Dense(w)(x)
      if i < len(self.widths) - 1:
        x = nn.relu(x)
    return x


class GraphClassifier(nn.Module):
  """See the module docstring.

  Attributes:
    pmt_positions: [P, 3] PMT table (numpy; the graph is built once, outside ``jit``).
    k: neighbours per PMT; features: node width per message-passing step; hidden: dense
    widths of the read-out; num_rbf: radial basis functions of the edge angle (0 to 4× the
    mean neighbour distance).
  """
  pmt_positions: Any
  k: int = 8
  features: Sequence[int] = (16, 32)
  hidden: Sequence[int] = (64,)
  num_rbf: int = 8
  num_classes: int = 1

  @nn.compact
  def __call__(self, batch, train: bool):
    del train
    x = jnp.log1p(batch["nodes"])  # [B, P, C]; hit counts span 0 to tens.
    b, p, _ = x.shape
    table = np.asarray(self.pmt_positions)
    if p != len(table):
      raise ValueError(f"GraphClassifier: nodes have {p} PMTs, the PMT table {len(table)}")
    senders, receivers, angle = pmt_graph(table, self.k)
    centres = np.linspace(0, 4 * angle.mean(), self.num_rbf)
    width = centres[1] - centres[0] if self.num_rbf > 1 else angle.mean()
    rbf = np.exp(-0.5 * ((angle[:, None] - centres) / width) ** 2).astype(np.float32)
    e = len(senders)
    offsets = (np.arange(b) * p)[:, None]
    graph = jraph.GraphsTuple(
        nodes=x.reshape(b * p, -1), edges=jnp.tile(jnp.asarray(rbf), (b, 1)),
        senders=jnp.asarray((senders[None] + offsets).reshape(-1)),
        receivers=jnp.asarray((receivers[None] + offsets).reshape(-1)),
        n_node=jnp.full((b,), p), n_edge=jnp.full((b,), e), globals=None)
    for f in self.features:
      edge_mlp, node_mlp = _MLP((f, f)), _MLP((f, f))
      net = jraph.GraphNetwork(
          update_edge_fn=lambda ed, s, r, g, m=edge_mlp: m(jnp.concatenate([ed, s, r], -1)),
          update_node_fn=lambda n, snt, rcv, g, m=node_mlp: nn.relu(
              m(jnp.concatenate([n, rcv], -1))),
          update_global_fn=None)
      graph = net(graph)
    h = graph.nodes.reshape(b, p, -1)
    h = jnp.concatenate([h.mean(1), h.max(1)], -1)
    for w in self.hidden:
      h = nn.relu(nn.Dense(w)(h))
    return _logits(h, self.num_classes)


MODELS = ("spherical", "planar", "graph")
