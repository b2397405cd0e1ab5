"""The source study's regional-mask direction method on any trained classifier (numpy).

The poster's first direction method: masks on the sphere, each with an assigned
direction, are applied to an event's image; a pre-trained classifier scores every masked
image; the directions whose masked score is most similar to the unmasked score are taken
(the poster shows the top 25 %). Our reading, made concrete:

* mask k keeps the spherical cap of half-angle ``cap_deg`` around direction d_k (a
  quasi-uniform Fibonacci set) and zeroes the rest of the image;
* change_k = |s(mask_k · x) − s(x)| for the classifier score s (e.g. the logit);
* the ``top_fraction`` of masks with the smallest change vote; the estimate is the
  normalised mean of their directions (the first, ``best``, is also returned).

It needs no direction training at all, only a classifier — and only finds where the
light that drives the classifier is, which for Cherenkov-only ββ events is near the
direction of the electrons. Cost: one classifier call per mask and event.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from recoil_jax.ops.sphere import grids


def fibonacci_directions(num: int) -> np.ndarray:
  """``num`` quasi-uniform unit vectors [num, 3] (a Fibonacci lattice)."""
  k = np.arange(num) + 0.5
  z = 1 - 2 * k / num
  phi = np.pi * (1 + 5 ** 0.5) * k
  r = np.sqrt(1 - z * z)
  return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def cap_masks(grid: grids.S2Grid, directions: np.ndarray, cap_deg: float) -> np.ndarray:
  """float32 [K, n_θ, n_φ]: 1 inside the cap of half-angle ``cap_deg`` around each direction."""
  x = grid.directions()  # [n_θ, n_φ, 3]
  cos = np.einsum("kc,tpc->ktp", np.asarray(directions, np.float64), x)
  return (cos >= np.cos(np.radians(cap_deg))).astype(np.float32)


def regional_mask_directions(score_fn: Callable[[np.ndarray], np.ndarray],
                             images: np.ndarray, grid: grids.S2Grid, *,
                             num_masks: int = 48, cap_deg: float = 60.0,
                             top_fraction: float = 0.25, batch: int = 64
                             ) -> dict[str, np.ndarray]:
  """Direction estimates of events from a classifier's response to regional masks.

  Args:
    score_fn: images [M, n_θ, n_φ, C] → scores [M] (e.g. a trained classifier's logit).
    images: [N, n_θ, n_φ, C] spherical images on ``grid``.
    grid: their S² grid.
    num_masks: K mask directions; cap_deg: cap half-angle (deg); top_fraction: share of
      the masks (most similar score) that vote; batch: images per ``score_fn`` call.

  Returns:
    ``{"direction": [N, 3] (unit, the vote), "best": [N, 3] (the single most similar
    mask), "change": [N, K] |Δscore|, "mask_directions": [K, 3]}``.
  """
  images = np.asarray(images, np.float32)
  dirs = fibonacci_directions(num_masks)
  masks = cap_masks(grid, dirs, cap_deg)[..., None]  # [K, n_θ, n_φ, 1]

  def scores(x):
    return np.concatenate([np.asarray(score_fn(x[i:i + batch]), np.float64).reshape(-1)
                           for i in range(0, len(x), batch)])

  base = scores(images)  # [N]
  masked = (images[:, None] * masks[None]).reshape((-1,) + images.shape[1:])
  change = np.abs(scores(masked).reshape(len(images), num_masks) - base[:, None])
  top = max(1, int(round(top_fraction * num_masks)))
  order = np.argsort(change, axis=1, kind="stable")
  vote = dirs[order[:, :top]].sum(1)
  vote /= np.maximum(np.linalg.norm(vote, axis=1, keepdims=True), 1e-12)
  return {"direction": vote, "best": dirs[order[:, 0]], "change": change,
          "mask_directions": dirs}
