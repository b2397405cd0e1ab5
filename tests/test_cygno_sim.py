"""The toy LIME simulator (recoil_jax.studies.cygno.sim): physics numbers and truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recoil_jax.studies.cygno import sim

SMALL = sim.SimConfig(height=128, width=128, tracks_per_image=2.0)


@pytest.fixture(scope="module")
def batch():
  return sim.simulate_images(3, 24, SMALL)


def test_seeded_and_shapes(batch):
  again = sim.simulate_images(3, 24, SMALL)
  np.testing.assert_array_equal(batch.images, again.images)
  np.testing.assert_array_equal(batch.instance, again.instance)
  other = sim.simulate_images(4, 24, SMALL)
  assert not np.array_equal(batch.images, other.images)
  assert batch.images.shape == (24, 128, 128) and batch.images.dtype == np.float32
  t = batch.num_tracks
  assert all(v.shape[0] == t for v in batch.tracks.values())
  assert np.all(np.bincount(batch.tracks["image"], minlength=24) >= 1)


def test_light_yield_matches_the_gem_chain():
  cfg = SMALL
  # G1ε·G2ε·G3 · 0.07 · Ω = (342·0.36)²·342·0.07·1.17e-4 photons per electron, 2 counts each.
  np.testing.assert_allclose(cfg.photons_per_electron,
                             (342 * 0.36)**2 * 342 * 0.07 * 1.17e-4, rtol=1e-12)
  np.testing.assert_allclose(cfg.counts_per_kev, 1e3 / 46.2 * cfg.photons_per_electron * 2)
  assert 1800 < cfg.counts_per_kev < 1900  # ≈ 1 850 counts/keV, ⁵⁵Fe ≈ 1.1e4 counts.


def test_fe55_spot_counts_and_resolution():
  # The unsaturated GEM chain (saturation off: the default's GEM3 saturation is tested below).
  cfg = dataclasses.replace(SMALL, nr_fraction=0.0, fe55_fraction=1.0, multiplicity="fixed",
                            tracks_per_image=1, z_range_mm=(100.0, 100.0),
                            absorption_length_mm=0.0, margin_mm=6.0, saturation=False)
  b = sim.simulate_images(0, 64, cfg)
  counts = b.tracks["signal_counts"]
  assert np.all(b.tracks["ionisation_kev"] == sim.FE55_KEV)
  # Mean = 5.9 keV × counts/keV; the relative spread is dominated by the exponential GEM1
  # gain over N ≈ 128 electrons: √(F/N + 1/N) ≈ 9.7 % (simulated; LIME measures 10-20 %).
  mean = sim.FE55_KEV * cfg.counts_per_kev
  assert abs(counts.mean() / mean - 1) < 0.04, counts.mean()
  assert 0.06 < counts.std() / counts.mean() < 0.14
  # Pedestal-subtracted frames hold the photon-sampled signal (≈ the noiseless sum) + noise.
  seen = (b.images - b.pedestal).sum(axis=(1, 2))
  assert np.all(np.abs(seen - counts) < 0.08 * counts + 5 * 2.0 * 128)


def test_saturation_factor():
  from scipy import integrate  # pylint: disable=g-import-not-at-top
  # R(u) = ∫ φ(t) / (1 + u e^{−t²/2}) dt: 1 at u = 0, 1 − u/√2 for small u, → 0 for large u.
  np.testing.assert_allclose(sim.saturation_factor(0.0), 1.0, rtol=1e-12)
  np.testing.assert_allclose(sim.saturation_factor(1e-4), 1 - 1e-4 / np.sqrt(2), rtol=1e-8)
  for u in (0.3, 4.0, 100.0):
    ref = integrate.quad(lambda t: np.exp(-t * t / 2) / np.sqrt(2 * np.pi) /
                         (1 + u * np.exp(-t * t / 2)), -40, 40, limit=200)[0]
    np.testing.assert_allclose(sim.saturation_factor(u), ref, rtol=1e-6)


def test_saturation_matches_cygno_voxel_model():
  # A point-like charge at drift z: our column-wise A·R against CYGNO's digitiser algorithm
  # (every GEM2 electron diffused in 3-D, 0.152 × 0.152 × 0.1 mm voxels, A·n·G/(1+β·G·n);
  # here electrons are drawn in bunches of 5, which saturates ~1 % more than single ones),
  # for the same primaries and GEM1 gains: ~0.4 at 50 mm, ~0.95 at 450 mm.
  cfg = sim.SimConfig()
  rng = np.random.default_rng(0)
  g, px = cfg.gem_gain, cfg.pixel_mm
  for z in (50.0, 250.0, 450.0):
    q = cfg.gem3_input_per_electron * rng.exponential(1.0, 128)
    ours = []
    for _ in range(4):
      xs, ys = 20 + cfg.diffusion_sigma_mm(z) * rng.standard_normal((2, 128))
      f = sim._saturation_gain(cfg, np.zeros(128, int), np.full(128, 20.0),  # pylint: disable=protected-access
                               np.full(128, 20.0), np.full(128, z), q, np.zeros(128, int),
                               np.floor(ys / px).astype(int), np.floor(xs / px).astype(int), 1)
      ours.append((f * q).sum() / q.sum())
    ne = np.round(q / 5).astype(int)
    pts = np.repeat([[20.0, 20.0, z]], ne.sum(), 0) + rng.standard_normal((ne.sum(), 3)) * [
        cfg.diffusion_sigma_mm(z), cfg.diffusion_sigma_mm(z), cfg.diffusion_long_sigma_mm(z)]
    _, n = np.unique(np.floor(pts / [px, px, 0.1]).astype(np.int64), axis=0,
                     return_counts=True)
    n = 5.0 * n
    exact = (cfg.saturation_scale * n * g / (1 + cfg.saturation_beta * g * n)).sum() / \
        (5.0 * ne.sum() * g)
    assert abs(np.mean(ours) / exact - 1) < 0.07, (z, np.mean(ours), exact)


def test_fe55_light_rises_with_drift_as_in_lime():
  # Default (saturated, absorbed) chain: the ⁵⁵Fe light per keV grows with drift distance
  # (diffusion dilutes the charge in GEM3) until absorption wins; the documented noiseless
  # values (module docstring, scripts/cygno_light_yield.py): ≈ 820 / 1 310 / 1 450 counts
  # per keV at z = 50 / 250 / 450 mm, σ/E ≈ 8.5 % at fixed z (simulated).
  base = dataclasses.replace(SMALL, height=64, width=64, nr_fraction=0.0, fe55_fraction=1.0,
                             multiplicity="fixed", tracks_per_image=1, margin_mm=4.0)
  per_kev = {}
  for z, doc in ((50.0, 820.0), (250.0, 1310.0), (450.0, 1450.0)):
    b = sim.simulate_images(5, 48, dataclasses.replace(base, z_range_mm=(z, z)))
    c = b.tracks["signal_counts"].astype(np.float64) / sim.FE55_KEV
    err = c.std() / np.sqrt(c.size)
    assert abs(c.mean() - doc) < 3 * err + 0.03 * doc, (z, c.mean(), err)
    assert 0.05 < c.std() / c.mean() < 0.13, (z, c.std() / c.mean())
    per_kev[z] = c.mean()
  assert per_kev[50.0] < 0.7 * per_kev[250.0] < per_kev[450.0]
  # Every value is below the unsaturated chain's A × nominal (no absorption).
  assert max(per_kev.values()) < base.saturation_scale * base.counts_per_kev


def test_noise_maps_and_noise_only_pixels(batch):
  ped, sigma = sim.detector_maps(SMALL)
  np.testing.assert_array_equal(ped, batch.pedestal)
  assert abs(np.median(sigma) - 2.0) < 0.1 and np.mean(sigma > 6) < 0.01
  empty = batch.pixel_label == 0
  far = (batch.images - batch.pedestal)[empty & (batch.instance == 0)]
  # Rounded Gaussian noise of σ ≈ 2 (a few signal tails below the truth threshold).
  assert abs(np.median(far)) < 0.5 and 1.8 < np.std(far[np.abs(far) < 15]) < 2.4


def test_truth_is_consistent(batch):
  tr = batch.tracks
  for t in range(batch.num_tracks):
    i, k = tr["image"][t], tr["index"][t]
    own = batch.instance[i] == k + 1
    if own.any():
      # Pixels owned by the track carry its class and lie inside its box.
      assert np.all(batch.pixel_label[i][own] == tr["cls"][t])
      r0, c0, r1, c1 = tr["box"][t]
      rows, cols = np.nonzero(own)
      assert rows.min() >= r0 and rows.max() < r1 and cols.min() >= c0 and cols.max() < c1
    mask = batch.track_mask(t)
    assert mask.sum() == tr["mask_pixels"][t]
    np.testing.assert_allclose(batch.track_noiseless(t).sum(), tr["signal_counts"][t],
                               rtol=1e-4)
  assert set(np.unique(batch.pixel_label)) <= {0, 1, 2}
  nr = tr["cls"] == sim.NR
  assert np.all(tr["species"][nr] > 0) and np.all(tr["species"][~nr] == 0)
  # Lindhard: an NR's recoil energy exceeds its ionisation energy; an ER's equals it.
  assert np.all(tr["energy_kev"][nr] > tr["ionisation_kev"][nr])
  np.testing.assert_array_equal(tr["energy_kev"][~nr], tr["ionisation_kev"][~nr])


def _extent_mm(b, t):
  """RMS radius of a track's noiseless light about its centroid, mm."""
  img = b.track_noiseless(t)
  r, c = np.nonzero(img)
  w = img[r, c]
  rr, cc = np.average(r, weights=w), np.average(c, weights=w)
  return np.sqrt(np.average((r - rr)**2 + (c - cc)**2, weights=w)) * b.config.pixel_mm


def test_nuclear_recoils_are_short_and_dense():
  # No diffusion or light spread: the track geometry itself, 20 keV visible energy.
  base = dataclasses.replace(SMALL, diffusion_sigma0_mm=0.01, diffusion_mm_per_sqrt_cm=0.0,
                             avalanche_sigma_mm=0.01,
                             multiplicity="fixed", tracks_per_image=1, margin_mm=9.0,
                             er_energy_kev=(20.0, 20.0), nr_ionisation_kev=(20.0, 20.0),
                             fe55_fraction=0.0)
  er = sim.simulate_images(1, 8, dataclasses.replace(base, nr_fraction=0.0))
  nr = sim.simulate_images(1, 8, dataclasses.replace(base, nr_fraction=1.0))
  er_size = np.median([_extent_mm(er, t) for t in range(8)])
  nr_size = np.median([_extent_mm(nr, t) for t in range(8)])
  # A 20 keV ER in He:CF4 travels ~7 mm of path; a 20 keVee NR (~30-50 keV recoil) < 0.4 mm.
  assert er_size > 1.0 and nr_size < 0.25 and er_size > 8 * nr_size, (er_size, nr_size)


def test_diffusion_grows_with_drift():
  cfg = SMALL
  np.testing.assert_allclose(cfg.diffusion_sigma_mm(0.0), 0.35)
  np.testing.assert_allclose(cfg.diffusion_sigma_mm(400.0),
                             np.sqrt(0.35**2 + 0.115**2 * 40.0))


def test_config_errors():
  with pytest.raises(ValueError, match="multiplicity"):
    sim.SimConfig(multiplicity="binomial")
  with pytest.raises(ValueError, match="er_energy_kev"):
    sim.SimConfig(er_energy_kev=(0.2, 10.0))
  with pytest.raises(ValueError, match="absorption_length_mm"):
    sim.SimConfig(absorption_length_mm=-1.0)
  with pytest.raises(ValueError, match="num_images"):
    sim.simulate_images(0, 0, SMALL)


def test_er_transport_physics_switches_reach_the_shared_transport():
  """The ER δ-rays / straggling / spread (on by default) change the electrons' positions,
  not their number (the Fano draw comes first); the physics itself is tested with the
  transport (tests/test_electron_recoil_physics.py)."""
  e = np.full(8, 30.0)
  on = sim.SimConfig()
  off = dataclasses.replace(on, er_delta_rays=False, er_straggling=False,
                            er_electron_spread=False)
  tracks_on = sim._electron_recoils(e, on, seed=3)
  tracks_off = sim._electron_recoils(e, off, seed=3)
  assert [len(t) for t in tracks_on] == [len(t) for t in tracks_off]
  assert all(not np.allclose(a, b) for a, b in zip(tracks_on, tracks_off))
  with pytest.raises(ValueError, match="er_delta_cut_kev"):
    sim.SimConfig(er_delta_cut_kev=0.2)
