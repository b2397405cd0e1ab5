"""CYGNO-style reconstruction of camera frames: preprocessing and iDBSCAN clustering.

The chain (CYGNO's reconstruction, ``CYGNUS-RD/reconstruction:snakes.py``, with the
iterative DBSCAN of arXiv 2007.01763):

1. **Pedestal subtraction**: ``image − pedestal map`` (counts).
2. **Zero suppression**: pixels at or below ``nsigma × σ_pixel`` (the per-pixel noise map)
   set to 0 (``nsigma = 0`` keeps every pixel above ``threshold_counts``).
3. **Median filter** k × k (k = 3, the source study's preprocessing; scipy.ndimage):
   isolated noise pixels vanish, tracks keep their shape.
4. **Threshold** ``threshold_counts`` (the thesis' "threshold 1"), giving the hits.
5. **Rebin** ``rebin`` × ``rebin`` (4, CYGNO's): the clustering runs on macro-pixels whose
   summed filtered intensity is > 0, each with the sample weight
   ``max(1, round(intensity / weight_unit_counts))`` (weights stand for repeated points:
   CYGNO's "3D" clustering, where a macro-pixel counts as often as its intensity).
6. **iDBSCAN** with scikit-learn's ``DBSCAN(sample_weight=...)`` per pass and CYGNO's
   parameters: pass 0 (ε 2.26, min 2) removes noise; pass 1 (ε 3.5, min 30) keeps the
   *long* clusters (size > 900), pass 2 (ε 2.8, min 6) the *medium* ones (> 150) of what
   is left, pass 3 (ε 6, min 2) every remaining *small* cluster. Cluster sizes are
   compared as CYGNO does, ``np.size`` of the 2-D point array, i.e. 2 × (summed weight).
   Points a pass leaves unclustered go on to the next pass, as in the original.

A cluster's hits are the full-resolution pixels of its macro-pixels that survived step 4;
its intensities are the pedestal-subtracted counts of those pixels (step 1), so negative
values may enter integrals, as in CYGNO. Lengths are in pixels (0.152 mm in LIME).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class RecoConfig:
  """Reconstruction parameters (defaults: the module docstring)."""

  nsigma: float = 1.5
  median_kernel: int = 3
  threshold_counts: float = 1.0
  rebin: int = 4
  eps: tuple[float, ...] = (2.26, 3.5, 2.8, 6.0)
  min_samples: tuple[float, ...] = (2, 30, 6, 2)
  size_cuts: tuple[float, float] = (900, 150)
  weight_unit_counts: float = 100.0
  min_hits: int = 4  # Clusters with fewer full-resolution hits are dropped.

  def __post_init__(self):
    if len(self.eps) != 4 or len(self.min_samples) != 4 or len(self.size_cuts) != 2:
      raise ValueError("RecoConfig: eps and min_samples need 4 passes, size_cuts 2 values")
    if self.median_kernel < 1 or self.rebin < 1 or self.weight_unit_counts <= 0:
      raise ValueError(f"RecoConfig: bad median_kernel/rebin/weight_unit_counts in {self}")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """One reconstructed cluster.

  Attributes:
    rows, cols: int32 [n] full-resolution hit pixels.
    values: float32 [n] pedestal-subtracted counts of the hits.
    iteration: the iDBSCAN pass that made it (1 long, 2 medium, 3 small).
    macro: int32 [m, 2] its macro-pixels (row, col) on the rebinned grid.
  """

  rows: np.ndarray
  cols: np.ndarray
  values: np.ndarray
  iteration: int
  macro: np.ndarray

  @property
  def num_hits(self) -> int:
    return int(self.rows.shape[0])


def subtract_pedestal(image: np.ndarray, pedestal: np.ndarray | float) -> np.ndarray:
  """``image − pedestal``, float32 [H, W] (pedestal a map [H, W] or a constant)."""
  image = np.asarray(image, np.float32)
  pedestal = np.asarray(pedestal, np.float32)
  if pedestal.ndim and pedestal.shape != image.shape:
    raise ValueError(f"subtract_pedestal: pedestal {pedestal.shape} vs image {image.shape}")
  return image - pedestal


def preprocess(image: np.ndarray, pedestal: np.ndarray | float,
               noise_sigma: np.ndarray | float | None, cfg: RecoConfig = RecoConfig()
               ) -> tuple[np.ndarray, np.ndarray]:
  """Steps 1–4: ``(subtracted [H, W], filtered [H, W])`` float32, counts.

  ``filtered`` is the zero-suppressed, median-filtered image with everything at or below
  ``threshold_counts`` set to 0 (its non-zero pixels are the hits).
  """
  sub = subtract_pedestal(image, pedestal)
  zs = sub
  if noise_sigma is not None and cfg.nsigma > 0:
    zs = np.where(sub > cfg.nsigma * np.asarray(noise_sigma, np.float32), sub, 0.0)
  filt = ndimage.median_filter(zs, size=cfg.median_kernel, mode="constant", cval=0.0) \
      if cfg.median_kernel > 1 else zs
  filt = np.where(filt > cfg.threshold_counts, filt, 0.0).astype(np.float32)
  return sub, filt


def segmentation_input(image: np.ndarray, pedestal, threshold_counts: float = 1.0,
                       median_kernel: int = 3) -> np.ndarray:
  """The source study's CNN input: ``(median_k(image − pedestal) > threshold) · 255``,
  uint8 [H, W] (no zero suppression)."""
  sub = subtract_pedestal(image, pedestal)
  filt = ndimage.median_filter(sub, size=median_kernel, mode="constant", cval=0.0)
  return np.where(filt > threshold_counts, 255, 0).astype(np.uint8)


def rebin_sum(image: np.ndarray, factor: int) -> np.ndarray:
  """Sum over ``factor`` × ``factor`` blocks, [H // f, W // f] (edges cropped)."""
  h, w = image.shape
  hh, ww = h // factor, w // factor
  return image[:hh * factor, :ww * factor].reshape(hh, factor, ww, factor).sum(axis=(1, 3))


def idbscan(points: np.ndarray, weights: np.ndarray, cfg: RecoConfig = RecoConfig()
            ) -> tuple[np.ndarray, np.ndarray]:
  """Iterative DBSCAN (arXiv 2007.01763) with sample weights, one sklearn DBSCAN per pass.

  Args:
    points: [n, 2] coordinates (macro-pixel row, col).
    weights: [n] sample weights (≥ 1).
    cfg: eps, min_samples and size cuts of the 4 passes.

  Returns:
    ``(labels [n] int, iteration [n] int)``: cluster id (−1 = noise) and the pass that
    made it (1 long, 2 medium, 3 small; −1 noise).
  """
  from sklearn.cluster import DBSCAN  # pylint: disable=g-import-not-at-top

  n = points.shape[0]
  labels = np.full(n, -1, np.int64)
  iteration = np.full(n, -1, np.int64)
  if n == 0:
    return labels, iteration
  weights = np.asarray(weights, np.float64)

  def run(idx, p):
    return DBSCAN(eps=cfg.eps[p], min_samples=cfg.min_samples[p]).fit(
        points[idx], sample_weight=weights[idx]).labels_

  left = np.flatnonzero(run(np.arange(n), 0) != -1)  # Pass 0: noise removal.
  next_id = 0
  for p in (1, 2, 3):
    if left.size == 0:
      break
    lab = run(left, p)
    ids = np.unique(lab[lab >= 0])
    if p < 3:
      # CYGNO compares np.size of the cluster's 2-D points: 2 × (points, here weights).
      size = np.array([2.0 * weights[left[lab == i]].sum() for i in ids])
      ids = ids[size > cfg.size_cuts[p - 1]]
    keep = np.isin(lab, ids) & (lab >= 0)
    for i in ids:
      sel = left[lab == i]
      labels[sel] = next_id
      iteration[sel] = p
      next_id += 1
    left = left[~keep]
  return labels, iteration


def find_clusters(image: np.ndarray, pedestal, noise_sigma, cfg: RecoConfig = RecoConfig()
                  ) -> list[Cluster]:
  """Steps 1–6 on one frame [H, W] (counts): the clusters, largest first."""
  sub, filt = preprocess(image, pedestal, noise_sigma, cfg)
  r = cfg.rebin
  macro = rebin_sum(filt, r)
  mr, mc = np.nonzero(macro > 0)
  if mr.size == 0:
    return []
  weights = np.maximum(1.0, np.round(macro[mr, mc] / cfg.weight_unit_counts))
  labels, iteration = idbscan(np.stack([mr, mc], 1).astype(np.float64), weights, cfg)
  # Full-resolution hits of each macro-pixel, grouped by the macro-pixel's cluster.
  hr, hc = np.nonzero(filt[:macro.shape[0] * r, :macro.shape[1] * r])
  macro_label = np.full(macro.shape, -1, np.int64)
  macro_label[mr, mc] = labels
  hit_label = macro_label[hr // r, hc // r]
  out = []
  for k in range(labels.max() + 1 if labels.size else 0):
    sel = hit_label == k
    if sel.sum() < cfg.min_hits:
      continue
    rows, cols = hr[sel].astype(np.int32), hc[sel].astype(np.int32)
    members = labels == k
    out.append(Cluster(rows, cols, sub[rows, cols].astype(np.float32),
                       int(iteration[members][0]),
                       np.stack([mr[members], mc[members]], 1).astype(np.int32)))
  out.sort(key=lambda c: -c.num_hits)
  return out


def match_clusters(clusters: Sequence[Cluster], instance: np.ndarray, noiseless: np.ndarray
                   | None = None, min_purity: float = 0.5) -> np.ndarray:
  """The truth track (image-local index k, −1 for none) of each cluster.

  A cluster belongs to the track owning most of its hits (``instance`` [H, W], 0 = none,
  k + 1 = track k); it is unmatched (−1) when that track owns less than ``min_purity`` of
  the hits. (``noiseless`` is accepted for a charge-weighted matching later; unused.)
  """
  del noiseless
  out = np.full(len(clusters), -1, np.int64)
  for i, c in enumerate(clusters):
    owner = instance[c.rows, c.cols].astype(np.int64)
    counts = np.bincount(owner)
    counts[0] = 0
    if counts.size > 1 and counts.max() >= min_purity * c.num_hits:
      out[i] = int(np.argmax(counts)) - 1
  return out
