"""Sparse 3D CNNs for electron-recoil direction (arXiv 2403.15949) and their output heads.

Layouts:
  batch["coords"]     int32   [B, V, 3]  voxel indices (x, y, z) on the 120³ grid of 0.5 mm
  batch["charges"]    float32 [B, V]     ionisation electrons per voxel (0 = padding row)
  batch["num_voxels"] int32   [B]        active rows per event
Outputs (dict, leading axis B):
  "pred_direction" float32 [B, 3] unit vector; "kappa" float32 [B] (vMF / Kent heads);
  "beta" [B], "frame" [B, 3, 3] (Kent head: rows γ1, γ2, γ3); "overflow" int32 [B]
  (sparse-capacity overflow count of the local batch, repeated per example so it shards
  like every other output); "symmetry" int32 [B] (training with ``symmetry_augment`` only:
  the index into ``cube_symmetries()`` applied to each event).

Trunks (channels-last sparse tensors, spconv semantics, see ``recoil_jax.ops.sparse``):
  "paper": the source study's Figure 3 — SparseConv3d(1→50, k6, s2) → ReLU → SparseMaxPool(2, 2)
          → SparseConv3d(50→30, k4) → ReLU → SparseConv3d(30→20, k3) → ReLU
          → SparseMaxPool(2, 2) → dense 12³×20 = 34 560 features.
  "deep": the authors' later paper (arXiv 2403.15949;
          ``mghrear/3D_Heteroscedastic_Convnet:mymodels.py``) — SubM(1→32, k7)
          → SubM(32→40, k5) → SparseConv(40→50, k6, s2) → MaxPool(2, 2)
          → SparseConv(50→30, k3, s2) → SparseConv(30→10, k3) → MaxPool(2, 2) → 2 160.
Training-time augmentation (``symmetry_augment``): each event is transformed by a random
element g of the cube's 48-element symmetry group (axis permutations × reflections). The
120³ grid is symmetric about its centre (voxel i ↔ 119 − i under x → −x, because tracks are
mean-centred on the grid centre), so g maps voxels onto voxels exactly and the transformed
event is exactly what rotating/reflecting the smeared electrons before voxelisation would
give; since the simulated directions are already isotropic, the transformed events have the
same distribution as the data. Instead of transforming the label, the network's output
directions are mapped back with gᵀ, which is equivalent for every loss here (they are
invariant under orthogonal maps of both arguments) and keeps the label untouched.

Heads follow the authors' published code (the source study's Figure 4 is not in its text): a
shared Dense(500) + ReLU, then a direction branch 200 ReLU → 50 tanh → 3 → L2-normalise,
and for the heteroscedastic model a κ branch 200 ReLU → 50 ReLU → 1 → softplus.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from recoil_jax.nn import direction_heads
from recoil_jax.ops import sparse

GRID_SHAPE = (120, 120, 120)

# (kind, features, kernel, stride) per layer; "pool" layers have no features.
TRUNKS: dict[str, tuple[tuple[str, int, int, int], ...]] = {
    "paper": (
        ("conv", 50, 6, 2),
        ("pool", 0, 2, 2),
        ("conv", 30, 4, 1),
        ("conv", 20, 3, 1),
        ("pool", 0, 2, 2),
    ),
    "deep": (
        ("subm", 32, 7, 1),
        ("subm", 40, 5, 1),
        ("conv", 50, 6, 2),
        ("pool", 0, 2, 2),
        ("conv", 30, 3, 2),
        ("conv", 10, 3, 1),
        ("pool", 0, 2, 2),
    ),
}


def cube_symmetries() -> jax.Array:
  """The 48 signed permutation matrices (the cube's full symmetry group) [48, 3, 3] float32."""
  perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
  mats = []
  for perm in perms:
    for signs in range(8):
      m = [[0.0] * 3 for _ in range(3)]
      for row, col in enumerate(perm):
        m[row][col] = -1.0 if (signs >> row) & 1 else 1.0
      mats.append(m)
  return jnp.asarray(mats, jnp.float32)


def apply_grid_symmetry(coords: jax.Array, mats: jax.Array, grid_size: int) -> jax.Array:
  """Voxel indices of the events transformed by signed permutations about the grid centre.

  Args:
    coords: int [B, V, 3] voxel indices in [0, grid_size).
    mats: [B, 3, 3] signed permutation matrices g (x' = g x about the centre).
    grid_size: voxels per axis (the grid must be cubic).

  Returns:
    int32 [B, V, 3]: ``g (c − c0) + c0`` with c0 = (grid_size − 1) / 2, exact in integers.
  """
  centred2 = 2 * coords.astype(jnp.int32) - (grid_size - 1)  # 2 (c − c0), an integer
  rotated2 = jnp.einsum("bij,bvj->bvi", mats.astype(jnp.int32), centred2)
  return (rotated2 + (grid_size - 1)) // 2


class SparseTrunk(nn.Module):
  """Sparse conv/pool stack → dense features [B, D0·D1·D2·C] (channels-last flatten).

  Attributes:
    layers: the layer table (see ``TRUNKS``).
    capacity_per_event: static number of active sites reserved per event after each
      strided/regular layer (one entry per non-SubM layer); the sparse tensor capacity is
      this times the local batch size. Sites beyond it are counted in ``overflow``.
  """

  layers: Sequence[tuple[str, int, int, int]]
  capacity_per_event: Sequence[int]
  spatial_shape: tuple[int, int, int] = GRID_SHAPE
  backend: str = "auto"  # Sparse-op backend: "auto" (Pallas on GPU), "xla" or "pallas".

  @nn.compact
  def __call__(self, coords, charges, num_voxels):
    batch = coords.shape[0]
    st = sparse.from_padded_voxels(
        coords, charges[..., None], num_voxels, self.spatial_shape)
    caps = iter(self.capacity_per_event)
    for i, (kind, features, kernel, stride) in enumerate(self.layers):
      if kind == "subm":
        st = sparse.SubMConv3d(features, kernel, backend=self.backend, name=f"subm{i}")(st)
      elif kind == "conv":
        st = sparse.SparseConv3d(features, kernel, strides=stride,
                                 out_capacity=next(caps) * batch, backend=self.backend,
                                 name=f"conv{i}")(st)
      elif kind == "pool":
        st = sparse.SparseMaxPool3d(kernel, strides=stride,
                                    out_capacity=next(caps) * batch, backend=self.backend,
                                    name=f"pool{i}")(st)
      else:
        raise ValueError(f"model.trunk layer {i}: unknown kind {kind!r}")
      if kind != "pool":
        st = st.replace(features=nn.relu(st.features))
    dense = sparse.ToDense()(st)
    return dense.reshape(batch, -1), st.overflow


class TpcDirectionNet(nn.Module):
  """Sparse CNN + direction head (``head``: a name in ``nn.direction_heads.HEADS``)."""

  trunk: str = "paper"
  head: str = "vmf"
  capacity_per_event: Sequence[int] = (1920, 384, 1920, 3456, 576)
  hidden: int = 500
  charge_scale: float = 1.0
  symmetry_augment: bool = False  # Random cube symmetry per event at train time (above).
  sparse_backend: str = "auto"  # "auto" (Pallas on GPU, XLA on CPU), "xla" or "pallas".

  @nn.compact
  def __call__(self, batch: dict[str, Any], train: bool = False) -> dict[str, jax.Array]:
    if self.trunk not in TRUNKS:
      raise ValueError(f"model.trunk={self.trunk!r}; known: {sorted(TRUNKS)}")
    layers = TRUNKS[self.trunk]
    num_caps = sum(kind != "subm" for kind, *_ in layers)
    if len(self.capacity_per_event) != num_caps:
      raise ValueError(
          f"model.capacity_per_event has {len(self.capacity_per_event)} entries; trunk "
          f"{self.trunk!r} has {num_caps} regular conv/pool layers that need one each")
    charges = batch["charges"].astype(jnp.float32) * self.charge_scale
    coords = batch["coords"]
    sym = None
    if train and self.symmetry_augment:
      grid = set(GRID_SHAPE)
      if len(grid) != 1:
        raise ValueError(f"symmetry_augment needs a cubic grid, got {GRID_SHAPE}")
      # The trainer's per-step, per-device stream (it is also the dropout stream).
      pick = jax.random.randint(self.make_rng("dropout"), (coords.shape[0],), 0, 48)
      sym = cube_symmetries()[pick]  # [B, 3, 3]
      coords = apply_grid_symmetry(coords, sym, GRID_SHAPE[0])
    h, overflow = SparseTrunk(layers, tuple(self.capacity_per_event),
                              backend=self.sparse_backend, name="trunk")(
        coords, charges, batch["num_voxels"])
    h = nn.relu(nn.Dense(self.hidden, name="shared")(h))
    batch_size = h.shape[0]
    out = {"overflow": jnp.full((batch_size,), overflow, jnp.int32)}
    out.update(direction_heads.head_spec(self.head).build(h))
    if sym is not None:
      # Directions were predicted for the transformed event: map them back with gᵀ.
      out["pred_direction"] = jnp.einsum("bji,bj->bi", sym, out["pred_direction"])
      if "frame" in out:
        out["frame"] = jnp.einsum("bji,bkj->bki", sym, out["frame"])
      out["symmetry"] = pick.astype(jnp.int32)  # index into cube_symmetries(), [B]
    return out
