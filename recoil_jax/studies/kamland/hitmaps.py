"""PMT hits → images: KamNet's 38 × 38 × 28-frame maps and maps on s2fft grids (per event).

* TOF subtraction: t_c = t − |x_PMT − x_vertex| / v, v = c/n = 20.6 cm/ns (the toy's
  propagation speed; KamNet uses the fitter's effective 16.95 cm/ns on real data, set
  ``speed_cm_ns``).
* Channels (``CHANNELS``): "all" = hits with t_c in [−20, 22) ns (KamNet's window);
  "early" = hits with t_c in [−20, ``early_ns``) (the first ~5 ns, where the source
  study's separation comes from).
* :func:`kamnet_frames`: KamNet's hit-count maps [28, 38, 38] (frames of 1.5 ns from
  −20 ns, earlier hits in frame 0; pixel = PMT direction seen from the detector centre on
  the 2b × 2b Driscoll–Healy grid, arXiv 2203.01870).
* :class:`Projector`: per-PMT channel counts [P, C] → images. "kamnet" bins them on the
  38 × 38 grid (the planar CNN's input); an s2fft grid at band-limit L smooths every PMT
  with a von Mises–Fisher kernel of width ``smoothing_deg`` (normalised so that the
  image integrates to the hit count), which keeps the map close to band-limited and
  avoids the empty polar pixels that binning 1879 PMTs onto fine polar rows leaves.
"""

from __future__ import annotations

import functools

import numpy as np

from recoil_jax.ops.sphere import grids
from recoil_jax.studies.kamland import sim

CHANNELS = ("all", "early")
WINDOW_NS = (-20.0, 22.0)
FRAME_NS = 1.5
NUM_FRAMES = 28


def tof_corrected(pmt: np.ndarray, time: np.ndarray, vertex: np.ndarray, pmt_positions,
                  speed_cm_ns: float = sim.PHOTON_SPEED_CM_NS) -> np.ndarray:
  """Hit times minus the time of flight from ``vertex`` [3] (m) to each hit PMT (ns)."""
  d = np.linalg.norm(pmt_positions[pmt] - np.asarray(vertex, np.float64), axis=-1)
  return np.asarray(time, np.float64) - d * 100.0 / speed_cm_ns


def channel_counts(pmt: np.ndarray, t_corr: np.ndarray, num_pmts: int,
                   channels=CHANNELS, early_ns: float = 5.0) -> np.ndarray:
  """Hit counts per PMT and channel, float32 [num_pmts, len(channels)]."""
  out = np.zeros((num_pmts, len(channels)), np.float32)
  in_window = (t_corr >= WINDOW_NS[0]) & (t_corr < WINDOW_NS[1])
  for c, name in enumerate(channels):
    if name == "all":
      sel = in_window
    elif name == "early":
      sel = in_window & (t_corr < early_ns)
    else:
      raise ValueError(f"unknown hit-map channel {name!r}; known: {CHANNELS}")
    np.add.at(out[:, c], pmt[sel], 1.0)
  return out


def kamnet_frames(pmt: np.ndarray, t_corr: np.ndarray, pmt_positions, b: int = 19
                  ) -> np.ndarray:
  """KamNet's hit-count maps float32 [28, 2b, 2b] (frame, θ row, φ column)."""
  row, col = grids.kamnet_grid(b).pixel_of(pmt_positions[pmt])
  frame = np.floor((t_corr - WINDOW_NS[0]) / FRAME_NS).astype(np.int64)
  frame = np.maximum(frame, 0)  # Earlier hits go to frame 0.
  keep = frame < NUM_FRAMES
  out = np.zeros((NUM_FRAMES, 2 * b, 2 * b), np.float32)
  np.add.at(out, (frame[keep], row[keep], col[keep]), 1.0)
  return out


class Projector:
  """Per-PMT counts [P, C] → an image [n_θ, n_φ, C] on ``grid`` ("kamnet", "dh" or "gl")."""

  def __init__(self, pmt_positions: np.ndarray, grid: str = "dh", L: int = 16,
               smoothing_deg: float = 6.0):
    self.grid_name = grid
    if grid == "kamnet":
      g = grids.kamnet_grid(19 if L is None else L)
      row, col = g.pixel_of(pmt_positions)
      self.shape = g.shape
      self._index = row * g.shape[1] + col
      self._matrix = None
    else:
      g = grids.s2fft_grid(L, grid)
      self.shape = g.shape
      self._matrix = _vmf_matrix(pmt_positions, g, smoothing_deg)
      self._index = None

  def __call__(self, counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float32)
    if self._matrix is not None:
      img = counts.T @ self._matrix  # [C, pixels]
    else:
      img = np.zeros((counts.shape[1], self.shape[0] * self.shape[1]), np.float32)
      for c in range(counts.shape[1]):
        img[c] = np.bincount(self._index, weights=counts[:, c], minlength=img.shape[1])
    return img.T.reshape(self.shape + (counts.shape[1],))


def _vmf_matrix(pmt_positions, g: grids.S2Grid, smoothing_deg: float) -> np.ndarray:
  """[P, pixels]: each PMT's vMF kernel sampled on the grid, integrating to 1 (quadrature)."""
  return _vmf_matrix_cached(np.asarray(pmt_positions, np.float64).tobytes(),
                            len(pmt_positions), g.name, g.L, float(smoothing_deg))


@functools.lru_cache(maxsize=8)
def _vmf_matrix_cached(pos_bytes, num, name, L, smoothing_deg):
  pos = np.frombuffer(pos_bytes, np.float64).reshape(num, 3)
  g = grids.s2fft_grid(L, name)
  u = pos / np.linalg.norm(pos, axis=1, keepdims=True)
  x = g.directions().reshape(-1, 3)
  kappa = 1.0 / np.radians(smoothing_deg) ** 2
  k = np.exp(kappa * (u @ x.T - 1.0))
  w = np.broadcast_to(g.weights[:, None], g.shape).reshape(-1)
  k /= (k * w).sum(1, keepdims=True)
  return k.astype(np.float32)
