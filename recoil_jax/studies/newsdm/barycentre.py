"""The classical NEWSdm baseline: the maximum barycentre shift across polarisations.

``VGentile87/NEWSdm:PlasmonAnalysis/myData_v5.C`` (``gr_max_dist_bar``) fits the grain
cluster in each of the 8 polarisation images and cuts on the largest distance between
any two of the 8 barycentres (``cut_bar_l`` 0.03 µm; arXiv 1812.09528: a multi-grain
track's barycentre moves along it as the polarisation turns, a single grain's does not).

Here each image's barycentre is the intensity-weighted centroid of its pixels above
``threshold_fraction`` of that image's maximum (the threshold keeps the noise floor out
of the centroid), in nm from the crop centre; the score is the largest pairwise distance
(nm). Higher = more signal-like, so it plugs into ``recoil_jax.analysis.classification``
as a score.
"""

from __future__ import annotations

import numpy as np

PIXEL_NM = 27.5
NUM_POLARISATIONS = 8
CUT_NM = 38.5  # The shift cut quoted with the authors' network (golovart/Napoli_emulsion).


def barycentres_nm(images: np.ndarray, threshold_fraction: float = 0.3) -> np.ndarray:
  """Barycentre of each polarisation image, float32 [N, 8, 2] (x, y) in nm.

  Args:
    images: mode-subtracted events [N, H, W, 8 | 9] (any numeric dtype; channel 9 ignored).
    threshold_fraction: pixels below this fraction of the image maximum get no weight.
  """
  a = np.asarray(images, np.float32)[..., :NUM_POLARISATIONS]
  n, h, w, _ = a.shape
  peak = a.max(axis=(1, 2), keepdims=True)
  weight = np.maximum(a - threshold_fraction * peak, 0.0)
  total = np.maximum(weight.sum(axis=(1, 2)), 1e-12)  # [N, 8]
  xs = (np.arange(w) - (w - 1) / 2) * PIXEL_NM
  ys = (np.arange(h) - (h - 1) / 2) * PIXEL_NM
  bx = np.einsum("nyxk,x->nk", weight, xs) / total
  by = np.einsum("nyxk,y->nk", weight, ys) / total
  return np.stack([bx, by], axis=-1).astype(np.float32)


def max_shift_nm(images: np.ndarray, threshold_fraction: float = 0.3) -> np.ndarray:
  """The largest distance between two of the 8 barycentres, float32 [N] (nm)."""
  b = barycentres_nm(images, threshold_fraction)
  d = np.linalg.norm(b[:, :, None, :] - b[:, None, :, :], axis=-1)
  return d.max(axis=(1, 2)).astype(np.float32)
