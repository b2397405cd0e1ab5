"""The 14 discriminating variables of a 2-D cluster (the thesis' list, CYGNO's 2-D code).

Inputs: a cluster's hit pixels (row, col) and their pedestal-subtracted counts; r_i below
is the pixel centre (col, row) of hit i, n the number of hits. Lengths are in pixels
(0.152 mm in LIME), intensities in camera counts. The 3-D definitions are those of
arXiv 2012.13649; the 2-D ones follow CYGNO's ``CYGNUS-RD/reconstruction`` code
(``After_reco/discriminating_vars_BaData.py``, ``clusterTools.py``):

================  ==========================================================================
SC_nhits          n, hits above the zero-suppression threshold
SC_integral       Σ counts over the hits (negative pixels included)
SC_length/_width  extent (max − min + 1 pixel) of the hits along / across the charge-
                  weighted principal axis
delta             SC_integral / SC_nhits (light density)
slimness          SC_width / SC_length
thin_track        skeleton pixels: hit mask → holes and objects < 7 px removed → 5×5 blur
                  (> ½) → Zhang–Suen thinning; 8 end-point pruning passes when > 50 pixels
                  (at least 1: a blob that thins away counts its central pixel)
curlyness         (long side of the minimum-area rectangle of the skeleton + 1) / thin_track
LAPA              length along the principal axis: max − min of the projections on the
                  first principal axis (unweighted PCA of the hits)
SDCD              √(mean ‖r_i − r̄‖²)
CylThick          Σ_i (distance of r_i from the principal axis)²
MaxDen            the largest 2×2-rebinned sum of counts (blocks at even pixel indices)
eta               MaxDen / thin_track
ChargeUnif        std over i of mean_{j≠i} ‖r_i − r_j‖
================  ==========================================================================

Where CYGNO's 2-D code and the paper disagree, both are implemented and named (the paper's
is the default, ``DEFAULT_DEFINITIONS``):

* ``CylThick``: ``"paper"`` (above) or ``"cygno_code"``: the code's slope loop resets its
  index so the *minor* PCA component is used, and it averages: the mean squared distance
  from the minor axis, i.e. the longitudinal variance of the hits.
* ``LAPA``: ``"paper"`` (centred projections) or ``"cygno_code"``: projections of the
  uncentred pixel coordinates, ``max |p| − min |p|`` (equal to the paper's only when the
  projections do not straddle 0).
* ``ChargeUnif``: ``"paper"`` or ``"cygno_code"``: the code's loop over a histogram of the
  mean distances starts at the underflow bin, so the series it takes the std of is the
  underflow's 0 followed by all but the last value (our reading of that loop).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage
from scipy import spatial

#: The thesis' 14 variables, in its order.
NAMES = ("thin_track", "SDCD", "CylThick", "ChargeUnif", "LAPA", "MaxDen", "eta",
         "curlyness", "SC_nhits", "SC_integral", "SC_length", "SC_width", "delta",
         "slimness")
#: The source study's datasets: every variable, and its two subsets.
DATASETS = {
    "All": NAMES,
    "Variable_5": ("MaxDen", "eta", "delta", "slimness", "SC_integral"),
    "Variable_9": ("thin_track", "SDCD", "CylThick", "ChargeUnif", "LAPA", "curlyness",
                   "SC_nhits", "SC_length", "SC_width"),
}
DEFINITIONS = {"CylThick": ("paper", "cygno_code"), "LAPA": ("paper", "cygno_code"),
               "ChargeUnif": ("paper", "cygno_code")}
DEFAULT_DEFINITIONS = {k: "paper" for k in DEFINITIONS}
_SMALL_OBJECT_PIXELS = 7
_PRUNE_ABOVE, _PRUNE_ITERATIONS = 50, 8


def _principal_axes(xy: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
  """(centroid [2], major axis [2], minor axis [2]) of points [n, 2] (weights optional)."""
  w = np.ones(len(xy)) if w is None or not np.any(w > 0) else np.maximum(w, 0)
  c = np.average(xy, axis=0, weights=w)
  d = xy - c
  cov = (d * w[:, None]).T @ d / w.sum()
  vals, vecs = np.linalg.eigh(cov)
  return c, vecs[:, 1], vecs[:, 0]


def _neighbours(img: np.ndarray) -> list[np.ndarray]:
  """P2..P9 (N, NE, E, SE, S, SW, W, NW) of every pixel of a zero-padded binary image."""
  p = np.pad(img, 1)
  h, w = img.shape
  at = lambda dr, dc: p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]  # noqa: E731
  return [at(-1, 0), at(-1, 1), at(0, 1), at(1, 1), at(1, 0), at(1, -1), at(0, -1),
          at(-1, -1)]


def thin(mask: np.ndarray) -> np.ndarray:
  """Zhang–Suen thinning of a binary image (bool [H, W]) to 1-pixel-wide lines."""
  img = np.asarray(mask, bool).astype(np.uint8)
  while True:
    changed = False
    for step in (0, 1):
      nb = _neighbours(img)
      b = sum(n.astype(np.int32) for n in nb)
      seq = nb + [nb[0]]
      a = sum(((seq[k] == 0) & (seq[k + 1] == 1)).astype(np.int32) for k in range(8))
      p2, p4, p6, p8 = nb[0], nb[2], nb[4], nb[6]
      if step == 0:
        cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
      else:
        cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
      remove = (img == 1) & (b >= 2) & (b <= 6) & (a == 1) & cond
      if remove.any():
        img[remove] = 0
        changed = True
    if not changed:
      return img.astype(bool)


def prune(skeleton: np.ndarray, iterations: int) -> np.ndarray:
  """Removes end points (exactly one 8-neighbour) ``iterations`` times."""
  sk = np.asarray(skeleton, bool).copy()
  for _ in range(iterations):
    count = sum(n.astype(np.int32) for n in _neighbours(sk.astype(np.uint8)))
    ends = sk & (count == 1)
    if not ends.any():
      break
    sk &= ~ends
  return sk


def skeleton(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """The thin_track skeleton of a set of hits: int [k, 2] (row, col) pixels."""
  r0, c0 = rows.min() - 4, cols.min() - 4
  mask = np.zeros((rows.max() - r0 + 5, cols.max() - c0 + 5), bool)
  mask[rows - r0, cols - c0] = True
  # Holes and specks smaller than 7 pixels go (skimage's remove_small_holes/objects).
  holes, nh = ndimage.label(~mask)
  if nh:
    sizes = ndimage.sum(np.ones_like(mask), holes, index=np.arange(1, nh + 1))
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = np.flatnonzero(sizes < _SMALL_OBJECT_PIXELS) + 1
    mask |= np.isin(holes, np.setdiff1d(small, border))
  objects, no = ndimage.label(mask, structure=np.ones((3, 3)))
  if no:
    sizes = ndimage.sum(mask, objects, index=np.arange(1, no + 1))
    keep = np.flatnonzero(sizes >= _SMALL_OBJECT_PIXELS) + 1
    if keep.size:  # A cluster made only of specks keeps them.
      mask = np.isin(objects, keep)
  smooth = ndimage.uniform_filter(mask.astype(np.float64), size=5, mode="constant") > 0.5
  sk = thin(smooth if smooth.any() else mask)
  if sk.sum() > _PRUNE_ABOVE:
    sk = prune(sk, _PRUNE_ITERATIONS)
  r, c = np.nonzero(sk)
  if r.size == 0:  # Zhang–Suen erases 2×2-symmetric blobs: keep the hit nearest the centre.
    i = np.argmin((rows - rows.mean())**2 + (cols - cols.mean())**2)
    return np.array([[rows[i], cols[i]]])
  return np.stack([r + r0, c + c0], axis=1)


def min_area_rectangle_long_side(points: np.ndarray) -> float:
  """Long side of the minimum-area bounding rectangle of points [n, 2] (pixel centres)."""
  pts = np.asarray(points, np.float64)
  if len(pts) < 2:
    return 0.0
  try:
    hull = pts[spatial.ConvexHull(pts).vertices]
  except spatial.QhullError:  # Collinear: the extent along the line.
    _, major, _ = _principal_axes(pts)
    proj = pts @ major
    return float(proj.max() - proj.min())
  edges = np.diff(np.concatenate([hull, hull[:1]]), axis=0)
  angles = np.arctan2(edges[:, 1], edges[:, 0])
  best_area, best_long = np.inf, 0.0
  for a in angles:
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    q = hull @ rot.T
    dx, dy = np.ptp(q[:, 0]), np.ptp(q[:, 1])
    if dx * dy < best_area - 1e-9:
      best_area, best_long = dx * dy, max(dx, dy)
  return float(best_long)


def _mean_distances(xy: np.ndarray, chunk: int = 1024) -> np.ndarray:
  """mean_{j≠i} ‖r_i − r_j‖ for every i, [n] (chunked: O(n) memory per row block)."""
  n = len(xy)
  out = np.empty(n)
  for s in range(0, n, chunk):
    d = np.sqrt(((xy[s:s + chunk, None, :] - xy[None, :, :])**2).sum(-1))
    out[s:s + chunk] = d.sum(1) / max(n - 1, 1)
  return out


def compute(rows, cols, values, definitions: Mapping[str, str] | None = None
            ) -> dict[str, float]:
  """The 14 variables of one cluster (module docstring).

  Args:
    rows, cols: int [n] hit pixels (n ≥ 1).
    values: float [n] pedestal-subtracted counts of the hits.
    definitions: ``{"CylThick" | "LAPA" | "ChargeUnif": "paper" | "cygno_code"}``
      (missing keys: ``DEFAULT_DEFINITIONS``).

  Returns:
    ``{name: value}`` for every name in ``NAMES`` (floats; lengths in pixels).
  """
  defs = dict(DEFAULT_DEFINITIONS)
  for k, v in (definitions or {}).items():
    if k not in DEFINITIONS or v not in DEFINITIONS[k]:
      raise ValueError(f"observables: unknown definition {k}={v!r}; known: {DEFINITIONS}")
    defs[k] = v
  rows = np.asarray(rows, np.int64)
  cols = np.asarray(cols, np.int64)
  values = np.asarray(values, np.float64)
  n = len(rows)
  if n == 0 or len(cols) != n or len(values) != n:
    raise ValueError(f"observables: need n >= 1 hits with rows, cols and values of equal "
                     f"length, got {len(rows)}, {len(cols)}, {len(values)}")
  xy = np.stack([cols, rows], 1).astype(np.float64)
  out: dict[str, float] = {"SC_nhits": float(n), "SC_integral": float(values.sum())}

  # Charge-weighted axes for the length and width.
  c_w, major_w, minor_w = _principal_axes(xy, values) if n > 1 else (xy[0], None, None)
  if n > 1:
    along, across = (xy - c_w) @ major_w, (xy - c_w) @ minor_w
    out["SC_length"] = float(np.ptp(along) + 1)
    out["SC_width"] = float(np.ptp(across) + 1)
  else:
    out["SC_length"] = out["SC_width"] = 1.0
  out["delta"] = out["SC_integral"] / n
  out["slimness"] = out["SC_width"] / out["SC_length"]

  # Unweighted geometry of the hits.
  c, major, minor = _principal_axes(xy) if n > 1 else (xy[0], np.array([1.0, 0]),
                                                        np.array([0, 1.0]))
  d = xy - c
  out["SDCD"] = float(np.sqrt(np.mean(np.sum(d * d, 1))))
  if defs["LAPA"] == "paper":
    p = d @ major
    out["LAPA"] = float(p.max() - p.min())
  else:
    p = np.abs(xy @ major)
    out["LAPA"] = float(p.max() - p.min())
  if defs["CylThick"] == "paper":
    out["CylThick"] = float(np.sum((d @ minor)**2))
  else:
    out["CylThick"] = float(np.mean((d @ major)**2))
  m = _mean_distances(xy)
  if defs["ChargeUnif"] == "cygno_code":
    m = np.concatenate([[0.0], m[:-1]])
  out["ChargeUnif"] = float(np.std(m))

  # 2×2-rebinned maximum density.
  blocks = np.stack([rows // 2, cols // 2], 1)
  _, inv = np.unique(blocks, axis=0, return_inverse=True)
  out["MaxDen"] = float(np.bincount(inv.reshape(-1), weights=values).max())

  sk = skeleton(rows, cols)
  out["thin_track"] = float(len(sk))
  out["curlyness"] = ((min_area_rectangle_long_side(sk) + 1) / len(sk)) if len(sk) else 0.0
  out["eta"] = out["MaxDen"] / max(out["thin_track"], 1.0)
  return {k: out[k] for k in NAMES}


def table(clusters, definitions: Mapping[str, str] | None = None) -> np.ndarray:
  """float32 [num_clusters, 14] of ``compute`` for clusters with ``rows, cols, values``."""
  rows = []
  for c in clusters:
    v = compute(c.rows, c.cols, c.values, definitions)
    rows.append([v[k] for k in NAMES])
  return np.array(rows, np.float32).reshape(-1, len(NAMES))
