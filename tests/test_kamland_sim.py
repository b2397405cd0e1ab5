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
