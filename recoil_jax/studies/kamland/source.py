"""Fixed-shape KamLAND examples for the trainer: hit lists → images (grain-compatible).

Every example (``KamlandSource[i]``):

  sphere          float32 [n_θ, n_φ, C]  on s2fft's grid (``sampling``, band-limit L)
  planar          float32 [38, 38, C]    KamNet's equiangular grid (planar CNN input)
  label           int32   []             1 = 0νββ, 0 = ¹⁰C
  visible_energy  float32 []             MeV (simulation truth; NaN from files)
  nhit            int32   []             hit PMTs
  direction       float32 [3]            true ββ direction (zeros when unknown)
  vertex          float32 [3]            reconstructed vertex (m)
  nodes           float32 [P, C]         hit counts per PMT (only if ``with_nodes``: the
                                         graph network's node features)

C = len(channels) ("all", "early": hit counts in KamNet's window / the first
``early_ns``, TOF-subtracted to the event vertex, see ``hitmaps``). ``planar`` holds hit
counts per pixel, ``sphere`` the smoothed hit density × 4π/P (hits per PMT-sized patch),
both × ``scale``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recoil_jax.data import pipeline
from recoil_jax.studies.kamland import hitmaps


class KamlandSource:
  """Random-access view of a split of hit lists (TFDS data source or a list of dicts)."""

  def __init__(self, data_source: Sequence[dict[str, Any]], pmt_positions: np.ndarray, *,
               L: int, sampling: str = "dh", channels: Sequence[str] = hitmaps.CHANNELS,
               early_ns: float = 5.0, smoothing_deg: float = 6.0, scale: float = 1.0,
               with_nodes: bool = False, name: str = "kamland split"):
    self._source = data_source
    self._pmts = np.asarray(pmt_positions, np.float64)
    self.channels = tuple(channels)
    self.early_ns = float(early_ns)
    self.scale = float(scale)
    self.name = name
    self.with_nodes = bool(with_nodes)
    self._sphere = hitmaps.Projector(self._pmts, sampling, L, smoothing_deg)
    self._planar = hitmaps.Projector(self._pmts, "kamnet", 19)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = pipeline.normalise_index(index, len(self), self.name)
    ex = self._source[i]
    pmt = np.asarray(ex["pmt"], np.int64)
    if pmt.size and (pmt.min() < 0 or pmt.max() >= len(self._pmts)):
      raise ValueError(f"{self.name}[{i}]: PMT index outside the table of {len(self._pmts)}")
    tc = hitmaps.tof_corrected(pmt, ex["time"], ex["vertex"], self._pmts)
    counts = hitmaps.channel_counts(pmt, tc, len(self._pmts), self.channels, self.early_ns)
    out = {
        # Density × 4π/P: hits per PMT-sized patch, the planar pixel's scale.
        "sphere": (self._sphere(counts) * (self.scale * 4 * np.pi / len(self._pmts))
                   ).astype(np.float32),
        "planar": (self._planar(counts) * self.scale).astype(np.float32),
        "label": np.int32(ex["label"]),
        "visible_energy": np.float32(ex["visible_energy"]),
        "nhit": np.int32(len(pmt)),
        "direction": np.asarray(ex.get("direction", np.zeros(3)), np.float32).reshape(3),
        "vertex": np.asarray(ex["vertex"], np.float32).reshape(3),
    }
    if self.with_nodes:
      out["nodes"] = counts * np.float32(self.scale)
    return out
