"""Toy KamLAND-Zen simulator: geometry, γ physics, resolution, matching, hit maps."""

import numpy as np
import pytest

from recoil_jax.ops.sphere import grids
from recoil_jax.studies.kamland import hitmaps
from recoil_jax.studies.kamland import sim


def test_pmt_table_counts_kinds_and_coverage():
  pos, kind = sim.pmt_table()
  assert pos.shape == (1879, 3) and (kind[:1325] == 0).all() and (kind[1325:] == 1).all()
  np.testing.assert_allclose(np.linalg.norm(pos, axis=1), 8.5)
  area = np.pi * (np.asarray(sim.PHOTOCATHODE_DIAMETER_M)[kind] / 2) ** 2
  assert area.sum() / (4 * np.pi * 8.5 ** 2) == pytest.approx(0.34, abs=0.01)


def test_gamma_mean_free_paths():
  np.testing.assert_allclose(sim.gamma_mean_free_path_cm(np.array([0.511, 0.718])),
                             [13.0, 15.1], atol=0.1)


def _charge_per_event(ev):
  return np.bincount(np.repeat(np.arange(len(ev)), ev.nhit), weights=ev.charge,
                     minlength=len(ev))


def test_signal_light_yield_resolution_and_point_source_timing():
  ev = sim.simulate(0, 128, "0vbb", cherenkov_pe_per_mev=0.0)
  q = _charge_per_event(ev)
  # ≈ 230 scintillation p.e./MeV at the centre; over r < 1.67 m mean and spread stay close.
  assert q.mean() / sim.Q_BB_MEV == pytest.approx(230, rel=0.05)
  assert 0.036 < q.std() / q.mean() < 0.055  # 6.6 %/√E at 2.458 MeV = 4.2 % + geometry.
  assert np.all(np.linalg.norm(ev.true_vertex, axis=1) < sim.FIDUCIAL_RADIUS_M)
  np.testing.assert_allclose(ev.visible_energy, sim.Q_BB_MEV, rtol=1e-6)


def test_cherenkov_yield_is_in_detected_photoelectrons():
  """cherenkov_pe_per_mev counts detected p.e. (like the scintillation yield): two ββ
  electrons with 2.458 − 2 × 0.195 MeV above threshold give ≈ 10 × 2.07 ≈ 21 p.e."""
  ev = sim.simulate(5, 300, "0vbb", cherenkov_only=True)
  assert _charge_per_event(ev).mean() == pytest.approx(10 * (sim.Q_BB_MEV - 0.39), rel=0.15)
  np.testing.assert_allclose(np.linalg.norm(ev.direction, axis=1), 1, rtol=1e-5)
  assert np.all(ev.visible_energy == 0)


def test_c10_deposits_spread_and_arrive_later_than_signal():
  bb, c10 = sim.simulate(1, 64, "0vbb"), sim.simulate(2, 64, "c10")
  assert np.all(c10.visible_energy <= 1.908 + 1.022 + 0.718 + 1e-5)
  assert np.median(c10.visible_energy) > 1.5
  pmts = sim.pmt_table()[0]

  def median_tc(ev):
    tc = hitmaps.tof_corrected(ev.pmt, ev.time, np.repeat(ev.vertex, ev.nhit, 0), pmts)
    return np.median(tc)

  assert median_tc(c10) > median_tc(bb) + 0.3  # Compton spread + o-Ps delay.


def test_matched_classes_have_equal_nhit_histograms():
  ev = sim.simulate_matched(3, 50)
  s, b = ev.nhit[ev.label == 1], ev.nhit[ev.label == 0]
  assert len(s) == len(b) == 50
  assert abs(np.mean(s) - np.mean(b)) < 0.1 * np.std(s) + 5


def test_kamnet_frames_and_projector_conserve_hits():
  ev = sim.simulate(4, 4, "0vbb")
  pmts = sim.pmt_table()[0]
  e = ev.event(0)
  tc = hitmaps.tof_corrected(e["pmt"], e["time"], ev.vertex[0], pmts)
  frames = hitmaps.kamnet_frames(e["pmt"], tc, pmts)
  assert frames.shape == (28, 38, 38)
  assert frames.sum() == np.sum(tc < 22.0)  # Earlier hits go to frame 0.
  counts = hitmaps.channel_counts(e["pmt"], tc, len(pmts))
  assert counts[:, 0].sum() == np.sum((tc >= -20) & (tc < 22))
  assert counts[:, 1].sum() == np.sum((tc >= -20) & (tc < 5))
  img = hitmaps.Projector(pmts, "dh", 8)(counts)
  g = grids.s2fft_grid(8, "dh")
  np.testing.assert_allclose(np.einsum("tpc,t->c", img, g.weights), counts.sum(0), rtol=1e-4)
  planar = hitmaps.Projector(pmts, "kamnet", 19)(counts)
  np.testing.assert_allclose(planar.sum((0, 1)), counts.sum(0))


def test_electron_csda_range_and_highland_angle():
  # Computed LS ranges (physics-facts §2): 0.22 / 0.68 / 1.1 / 1.5 cm.
  np.testing.assert_allclose(sim.electron_csda_range_cm(np.array([0.5, 1.23, 1.9, 2.458])),
                             [0.22, 0.68, 1.1, 1.5], rtol=0.06)
  assert sim.RADIATION_LENGTH_CM == pytest.approx(50.9, abs=0.1)  # 3 wt % Xe in CH₂-like LS.
  # 1 MeV electron: βp = 1.338 MeV → 13.6 / 1.338 × √(1 cm / 50.87 cm) = 1.425 rad.
  assert sim.highland_sigma_rad(1.0, 1.0) == pytest.approx(1.425, rel=0.01)


def test_electron_tracks_keep_energy_and_yield_and_lose_direction():
  rng = np.random.default_rng(0)
  n = 400
  t0 = np.column_stack([np.full(n, 1.2), np.full(n, 0.15)])  # Second: below threshold.
  u = np.tile([0.0, 0.0, 1.0], (n, 2, 1))
  (pos, d, t_cone, t_emit, weight, walk), (s_pos, s_e, s_t) = sim.electron_tracks(
      rng, np.zeros((n, 3)), u, t0)
  k = sim.ELECTRON_STEPS
  assert pos.shape == (n, 2 * k, 3) and s_e.shape == (n, 2 * (k + 1))
  np.testing.assert_allclose(weight[:, :k].sum(1), 1.2 - sim.CHERENKOV_THRESHOLD_MEV)
  assert np.all(weight[:, k:] == 0)  # No Cherenkov light below threshold.
  np.testing.assert_allclose(s_e.sum(1), 1.35)  # Every MeV deposited somewhere.
  assert np.all(t_cone[:, :k] >= sim.CHERENKOV_THRESHOLD_MEV) and np.all(walk >= 0)
  cos = d[:, :k, 2].mean(0)  # Memory of the initial direction fades along the track.
  assert cos[0] > 0.9 and cos[-1] < 0.3 and np.all(np.diff(cos) < 0.05)
  reach = np.linalg.norm(s_pos[:, k - 1], axis=1) * 100  # End of the 1.2 MeV track, cm.
  assert np.all(reach < sim.electron_csda_range_cm(1.2) + 1e-9) and reach.mean() > 0.2
  assert np.all(np.diff(t_emit[:, :k], axis=1) > 0)


def test_electron_tracks_keep_the_cherenkov_yield_and_blur_the_direction():
  pmts = sim.pmt_table()[0]

  def centroid_error(ev):
    err = []
    for i in range(len(ev)):
      h = pmts[ev.event(i)["pmt"]] - ev.vertex[i]
      v = np.sum(h / np.linalg.norm(h, axis=1, keepdims=True), 0)
      err.append(np.degrees(np.arccos(np.clip(v @ ev.direction[i] / np.linalg.norm(v), -1, 1))))
    return np.median(err)

  point = sim.simulate(7, 80, "0vbb", cherenkov_only=True)
  track = sim.simulate(7, 80, "0vbb", cherenkov_only=True, electron_tracks=True)
  q = lambda ev: ev.charge.sum() / len(ev)  # noqa: E731
  assert q(track) == pytest.approx(q(point), rel=0.15)
  assert centroid_error(track) > centroid_error(point) + 10
  full = sim.simulate(8, 16, "0vbb", electron_tracks=True)  # Scintillation along the tracks.
  np.testing.assert_allclose(full.visible_energy, sim.Q_BB_MEV, rtol=1e-6)


def test_matching_retries_with_more_events_when_a_bin_is_short():
  """Too little background for the quota (oversample 0.3) fails at once; the retry
  simulates more from further seeds and still returns matched, deterministic classes."""
  with pytest.raises(ValueError, match="simulate more"):
    s = sim.simulate(np.random.SeedSequence(0).spawn(3)[0], 28, "0vbb")
    sim.match_nhit(s, s.select(np.arange(5)), 25)
  ev = sim.simulate_matched(0, 25, oversample_background=0.3)
  again = sim.simulate_matched(0, 25, oversample_background=0.3)
  assert (ev.label == 1).sum() == (ev.label == 0).sum() == 25
  np.testing.assert_array_equal(ev.time, again.time)
