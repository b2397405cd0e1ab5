"""The authors' format: readers and writers (.npy/.npz/TIFF), mode subtraction, cleaning
cuts with counts, the barycentre-shift baseline and errors naming file and event."""

from __future__ import annotations

import numpy as np
import pytest

from recoil_jax.studies.newsdm import barycentre
from recoil_jax.studies.newsdm import readers
from recoil_jax.studies.newsdm import sim


def _events(n=5, seed=0):
  return readers.authors_format(sim.simulate(seed, n, ("c100", "fog"))["raw"])


@pytest.mark.parametrize("ext", [".npy", ".npz", ".tif", ".tiff"])
def test_round_trip(tmp_path, ext):
  images = _events()
  kind = np.arange(5, dtype=np.int32)
  path = readers.write_stacks(tmp_path / f"ev{ext}", images, kind=kind)
  got = readers.read_stacks(path)
  assert got.images.dtype == np.uint8 and got.images.shape == (5, 40, 40, 9)
  np.testing.assert_array_equal(got.images, images)
  np.testing.assert_array_equal(got.images[..., 8], got.images[..., 0])
  if ext == ".npz":
    np.testing.assert_array_equal(got.kind, kind)


def test_eight_channels_trailing_axis_scaled_floats_and_raw(tmp_path):
  images = _events()
  np.save(tmp_path / "a.npy", images[..., :8])
  np.testing.assert_array_equal(readers.read_stacks(tmp_path / "a.npy").images, images)
  np.save(tmp_path / "b.npy", images[..., None].astype(np.float32) / 256)  # Network input.
  np.testing.assert_array_equal(readers.read_stacks(tmp_path / "b.npy").images, images)
  raw = sim.simulate(1, 3, "fog")["raw"]
  np.save(tmp_path / "raw.npy", raw)
  got = readers.read_stacks(tmp_path / "raw.npy", raw=True).images
  np.testing.assert_array_equal(got, readers.authors_format(raw))


def test_mode_subtraction():
  raw = np.full((2, 40, 40, 8), 31, np.uint8)
  raw[0, :5, :, 3] = 29  # Fewer pixels than the background level: not the mode.
  raw[1, 10:12, 10:12, :] = 200
  out = readers.subtract_mode(raw)
  assert readers.image_modes(raw).tolist() == [[31] * 8, [31] * 8]
  assert out[0, 0, 0, 3] == 0 and out[0, 10, 10, 3] == 0  # Clipped at 0 below the mode.
  assert out[1, 10, 10, 0] == 169 and out[1, 0, 0, 0] == 0


def test_errors_name_the_file_and_the_event(tmp_path):
  images = _events()
  bad = images.copy()
  bad[3, 0, 0, 8] = bad[3, 0, 0, 0] + 1
  np.save(tmp_path / "c9.npy", bad)
  with pytest.raises(ValueError, match=r"c9\.npy: event 3: channel 9 differs"):
    readers.read_stacks(tmp_path / "c9.npy")
  big = images.astype(np.int32)
  big[2, 5, 5, 1] = 300
  np.save(tmp_path / "range.npy", big)
  with pytest.raises(ValueError, match=r"range\.npy: event 2 has values outside"):
    readers.read_stacks(tmp_path / "range.npy")
  np.save(tmp_path / "shape.npy", np.zeros((3, 32, 32, 9), np.uint8))
  with pytest.raises(ValueError, match=r"shape\.npy: array of shape \(3, 32, 32, 9\)"):
    readers.read_stacks(tmp_path / "shape.npy")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pages = [Image.fromarray(np.zeros((40, 40), np.uint8)) for _ in range(13)]
  pages[0].save(tmp_path / "short.tif", save_all=True, append_images=pages[1:])
  with pytest.raises(ValueError, match=r"short\.tif: 13 pages .* event, 1, is incomplete"):
    readers.read_stacks(tmp_path / "short.tif")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match=r"junk\.npz"):
    readers.read_stacks(tmp_path / "junk.npz")
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    readers.read_stacks(tmp_path / "nope.npy")


def _spot(x, y, amp, sigma=3.0):
  yy, xx = np.mgrid[:40, :40]
  return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def test_cleaning_cuts_are_counted_in_order():
  n = 60
  images = np.zeros((n, 40, 40, 8), np.float32)
  for i in range(n):
    images[i] += _spot(20, 20, 30 + i * 0.5)[..., None]  # Brightness rises with i.
  images[0] += _spot(20, 20, 150)[..., None]  # Saturated (> 128).
  images[5] += _spot(5, 5, 30)[..., None]  # A second cluster: not isolated.
  images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  res = readers.cleaning_cuts(images, brightest_fraction=0.05)
  # 59 unsaturated events: 2 lie above their 95th percentile (linear interpolation).
  assert res.counts == {"events": n, "saturated": 1, "brightest": 2, "not_isolated": 1,
                        "kept": 56}
  assert not res.keep[0] and not res.keep[5] and not res.keep[-1] and res.keep[1]
  fixed = readers.cleaning_cuts(images, brightness_threshold=1e9)
  assert fixed.counts["brightest"] == 0 and fixed.counts["kept"] == 58
  assert readers.cluster_counts(images).tolist()[4:7] == [1, 2, 1]


def test_barycentre_shift_of_a_known_displacement():
  images = np.stack([_spot(20 + (k == 3) * 2.0, 20, 50) for k in range(8)], axis=-1)[None]
  # The spot moves by 2 pixels in one polarisation: a 55 nm shift (threshold keeps the
  # spot symmetric, so the centroid is exact).
  assert barycentre.max_shift_nm(images)[0] == pytest.approx(2 * 27.5, rel=1e-3)
  steady = np.repeat(_spot(19.5, 19.5, 50)[..., None], 8, axis=-1)[None]
  assert barycentre.max_shift_nm(steady)[0] < 1e-3
  np.testing.assert_allclose(barycentre.barycentres_nm(steady)[0], 0.0, atol=1e-3)
