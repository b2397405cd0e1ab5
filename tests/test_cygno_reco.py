"""CYGNO-style reconstruction (recoil_jax.studies.cygno.reco): preprocessing and iDBSCAN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recoil_jax.studies.cygno import reco
from recoil_jax.studies.cygno import sim


def _frame(seed=0, shape=(96, 96)):
  rng = np.random.default_rng(seed)
  pedestal = 99.0 + rng.standard_normal(shape)
  sigma = np.full(shape, 2.0)
  image = pedestal + sigma * rng.standard_normal(shape)
  return image, pedestal, sigma


def test_preprocess_keeps_a_track_and_removes_noise():
  image, ped, sigma = _frame()
  image[40:43, 10:70] += 30.0  # A 3-pixel-wide band of 30 counts.
  sub, filt = reco.preprocess(image, ped, sigma)
  np.testing.assert_allclose(sub, image - ped, atol=1e-4)
  hits = filt > 0
  assert hits[41, 12:68].all()  # The band's core survives the median filter.
  # Pure noise nearly vanishes (≥ 5 of 9 neighbours above 1.5σ: ~1e-4 per pixel) ...
  assert hits[:30].sum() + hits[55:].sum() < 20
  # ... and what is left is not clustered: the band is the one cluster.
  clusters = reco.find_clusters(image, ped, sigma)
  assert len(clusters) == 1 and set(clusters[0].rows) <= {39, 40, 41, 42, 43}
  seg = reco.segmentation_input(image, ped)
  assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 255} and seg[41, 40] == 255
  with pytest.raises(ValueError, match="pedestal"):
    reco.subtract_pedestal(image, ped[:10])


def test_idbscan_passes_weights_and_noise():
  rng = np.random.default_rng(1)
  blob_a = rng.normal([10, 10], 1.0, (60, 2)).round()
  blob_b = rng.normal([40, 40], 1.0, (20, 2)).round()
  lone = np.array([[70.0, 5.0], [5.0, 70.0]])
  pts = np.concatenate([blob_a, blob_b, lone])
  w = np.ones(len(pts))
  w[-2] = 3.0  # A bright isolated macro-pixel is its own core (weight ≥ min_samples 2).
  labels, it = reco.idbscan(pts, w)
  assert len(set(labels[:60])) == 1 and len(set(labels[60:80])) == 1
  assert labels[0] != labels[60] and labels[0] >= 0
  assert labels[-2] >= 0 and labels[-1] == -1  # Weight 3 kept, weight 1 is noise.
  assert set(it[labels >= 0]) <= {1, 2, 3}
  # With heavy weights blob A passes the "long" cut (2 × Σw > 900) in pass 1.
  heavy = w.copy()
  heavy[:60] = 10.0
  labels, it = reco.idbscan(pts, heavy)
  assert np.all(it[:60] == 1) and np.all(it[60:80] == 3)
  empty = reco.idbscan(np.zeros((0, 2)), np.zeros(0))
  assert empty[0].shape == (0,)


def test_rebin_sum():
  x = np.arange(36.0).reshape(6, 6)
  np.testing.assert_allclose(reco.rebin_sum(x, 3), [[63, 90], [225, 252]])
  assert reco.rebin_sum(np.ones((10, 10)), 4).shape == (2, 2)


def test_every_simulated_track_is_found_and_matched():
  cfg = sim.SimConfig(height=128, width=128, multiplicity="fixed", tracks_per_image=1)
  b = sim.simulate_images(7, 12, cfg)
  for i in range(len(b)):
    clusters = reco.find_clusters(b.images[i], b.pedestal, b.noise_sigma)
    match = reco.match_clusters(clusters, b.instance[i])
    assert 0 in match, (i, b.tracks["cls"][i], b.tracks["ionisation_kev"][i])
    best = clusters[int(np.argmax(match == 0))]
    # Hits mostly belong to the track (the rest: its faint halo below the 2-count truth
    # threshold, lifted by noise), and hold most of its light (simulated, ≥ 1 keV).
    assert (b.instance[i][best.rows, best.cols] == 1).mean() > 0.6
    assert best.values.sum() > 0.5 * b.tracks["signal_counts"][i]


def test_config_errors():
  with pytest.raises(ValueError, match="4 passes"):
    reco.RecoConfig(eps=(1.0, 2.0))
  assert dataclasses.replace(reco.RecoConfig(), nsigma=0).nsigma == 0
