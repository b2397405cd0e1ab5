"""Random-access sources of fixed-shape TPC examples for the trainer (grain-compatible).

Every example is a dict of numpy arrays with fixed shapes, padding rows zero:

  coords      int32   [max_voxels, 3]  voxel indices (x, y, z) in [0, 120)
  charges     float32 [max_voxels]     electrons per voxel
  num_voxels  int32   []               active rows
  direction   float32 [3]              unit label
  energy_kev  float32 []               keV
  sigma_um    float32 []               smearing σ, µm

:class:`TpcSource` wraps a split of the TFDS dataset (``builder.as_data_source(split)``);
:class:`InMemoryTpcSource` wraps ``tpc_preprocess.VoxelisedTracks`` (colab, tests).
An example with more voxels than ``max_voxels`` is an error (never truncated).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recoil_jax.data import builder_lib
from recoil_jax.data import pipeline
from recoil_jax.studies.tpc import preprocess as tpc_preprocess


def pad_example(coords: np.ndarray, charges: np.ndarray, direction: np.ndarray,
                energy_kev: Any, sigma_um: Any, max_voxels: int,
                where: str = "example") -> dict[str, np.ndarray]:
  """One fixed-shape example from variable-length voxels (coords [n, 3], charges [n])."""
  coords = np.asarray(coords)
  charges = np.asarray(charges)
  n = charges.shape[0]
  if coords.shape != (n, 3):
    raise ValueError(f"{where}: coords shape {coords.shape} does not match charges ({n},)")
  if n > max_voxels:
    raise ValueError(f"{where}: {n} voxels > max_voxels={max_voxels} (the dataset was built "
                     "with a larger max_voxels; rebuild or raise max_voxels)")
  out_coords = np.zeros((max_voxels, 3), np.int32)
  out_charges = np.zeros((max_voxels,), np.float32)
  out_coords[:n] = coords
  out_charges[:n] = charges
  return {
      "coords": out_coords,
      "charges": out_charges,
      "num_voxels": np.int32(n),
      "direction": np.asarray(direction, np.float32).reshape(3),
      "energy_kev": np.float32(energy_kev),
      "sigma_um": np.float32(sigma_um),
  }


class TpcSource:
  """Fixed-shape view of a TFDS split (``builder.as_data_source(split)``)."""

  def __init__(self, data_source: Sequence[dict[str, Any]], max_voxels: int, name: str = ""):
    if int(max_voxels) < 1:
      raise ValueError(f"max_voxels must be >= 1, got {max_voxels}")
    self._source = data_source
    self.max_voxels = int(max_voxels)
    self.name = name or str(getattr(data_source, "split", "") or "tpc split")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = pipeline.normalise_index(index, len(self), self.name)
    ex = self._source[i]
    return pad_example(ex["coords"], ex["charges"], ex["direction"], ex["energy_kev"],
                       ex["sigma_um"], self.max_voxels, where=f"{self.name}[{i}]")

  def __repr__(self) -> str:
    return f"TpcSource({self.name}, {len(self)} examples, max_voxels={self.max_voxels})"


class InMemoryTpcSource:
  """Fixed-shape view of ``VoxelisedTracks`` held in memory."""

  def __init__(self, tracks: tpc_preprocess.VoxelisedTracks, max_voxels: int | None = None):
    self.max_voxels = int(max_voxels if max_voxels is not None else tracks.max_voxels)
    too_big = np.flatnonzero(tracks.num_voxels > self.max_voxels)
    if too_big.size:
      raise ValueError(f"track {too_big[0]} has {tracks.num_voxels[too_big[0]]} voxels > "
                       f"max_voxels={self.max_voxels}")
    self._tracks = tracks

  def __len__(self) -> int:
    return len(self._tracks)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    t = self._tracks
    i = pipeline.normalise_index(index, len(self), "tracks")
    n = int(t.num_voxels[i])
    return pad_example(t.coords[i, :n], t.charges[i, :n], t.direction[i], t.energy_kev[i],
                       t.sigma_um[i], self.max_voxels, where=f"tracks[{i}]")


def tpc_sources(builder, max_voxels: int,
                splits: Sequence[str] | None = None) -> dict[str, TpcSource]:
  """``{split: TpcSource}`` for the splits of a prepared TFDS builder (all by default)."""
  names = builder_lib.prepared_splits(builder, splits,
                                      build_with="tpc.dataset.build_tpc_dataset")
  return {s: TpcSource(builder.as_data_source(s), max_voxels, name=s) for s in names}
