"""The regional-mask direction method on a stand-in classifier with a known answer."""

import numpy as np

from recoil_jax.analysis import direction as direction_analysis
from recoil_jax.ops.sphere import grids
from recoil_jax.studies.kamland import masks


def test_masks_find_the_light_that_drives_the_classifier():
  g = grids.s2fft_grid(12, "dh")
  x = g.directions()
  w = np.broadcast_to(g.weights[:, None], g.shape)
  rng = np.random.default_rng(0)
  truth = rng.standard_normal((6, 3))
  truth /= np.linalg.norm(truth, axis=1, keepdims=True)
  # A blob of light (vMF, 15°) around each true direction.
  images = np.exp(8.0 * (np.einsum("nc,tpc->ntp", truth, x) - 1))[..., None].astype(np.float32)

  def score(imgs):  # Stand-in classifier: the light it sees (any monotone function would do).
    return np.einsum("ntpc,tp->n", imgs, w)

  out = masks.regional_mask_directions(score, images, g, num_masks=64, cap_deg=50)
  err = direction_analysis.angular_errors_deg(out["direction"], truth)
  assert out["change"].shape == (6, 64)
  assert np.all(err < 20), err  # Mask spacing ≈ √(4π/64) ≈ 25°.
  # The masks cover the sphere: every grid point is inside at least one cap.
  assert masks.cap_masks(g, out["mask_directions"], 50).max(0).min() == 1
