"""Tests of the toy SBND LArTPC simulator (recoil_jax.studies.sbnd.sim and helpers).

Reference numbers are independently computed liquid-argon values (CSDA ranges,
MIP dE/dx, ModBox R ≈ 0.70 with the ArgoNeuT parameters of arXiv 1306.1712,
≈19k e⁻ per 3 mm wire) and come from the CosmicTagger paper
(arXiv 2012.01301: ~11k active, ~2.3k cosmic, ~250 neutrino pixels per plane at
640×1024).  All numbers produced here are simulated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from recoil_jax.studies.sbnd import sim as L
from recoil_jax.studies.sbnd import sim_generators as gen
from recoil_jax.studies.sbnd import sim_physics as phys
from recoil_jax.studies.sbnd import sim_tracks as tr

QUIET = dict(noise_adc=(0.0, 0.0, 0.0), fluctuations=False)


def _deposits(points, energy_mev=0.2, step_mm=1.0, time_us=0.0,
              origin=tr.ORIGIN_COSMIC) -> tr.Deposits:
  points = np.atleast_2d(np.asarray(points, np.float64))
  n = points.shape[0]
  return tr.Deposits(position_mm=points, energy_mev=np.full(n, energy_mev),
                     step_mm=np.full(n, step_mm), time_us=np.full(n, time_us),
                     origin=np.full(n, origin, np.int64))


def _line(start, stop, n):
  return np.linspace(start, stop, n)


def _straight_muon(kinetic_mev, start, direction, length_mm, **options):
  muon = tr.Particles.make(phys.MUON, start, direction, kinetic_mev, 0.0,
                           tr.ORIGIN_NEUTRINO, charge=-1, max_length_mm=length_mm)
  opts = tr.TransportOptions(**options)
  return tr.transport(muon, np.random.default_rng(0), opts)


# --------------------------------------------------------------------------
# Physics tables
# --------------------------------------------------------------------------


def test_csda_ranges_match_computed_tables():
  tables = phys.range_tables()
  # Independently computed CSDA ranges (Bethe, PDG liquid-argon constants), cm.
  proton = {10: 0.13, 30: 0.92, 50: 2.28, 100: 7.8, 200: 25.9, 500: 116}
  muon = {50: 10.8, 100: 30.5, 300: 123, 1000: 433}
  for species, table in ((phys.PROTON, proton), (phys.MUON, muon)):
    t = np.array(list(table), np.float64)
    r_cm = tables.range_of(np.full(t.size, species), t) / 10.0
    np.testing.assert_allclose(r_cm, list(table.values()), rtol=0.06)
    # The inverse table returns the energy.
    back = tables.kinetic_of(np.full(t.size, species), r_cm * 10.0)
    np.testing.assert_allclose(back, t, rtol=1e-3)


def test_mip_dedx_and_recombination():
  t = np.geomspace(50, 1e5, 4000)
  dedx_cm = 10 * phys.heavy_dedx_mev_per_mm(t, phys.MUON_MASS_MEV)
  # Bethe minimum 2.105-2.12 MeV/cm near βγ ≈ 3.5 (p ≈ 0.37 GeV/c).
  assert dedx_cm.min() == pytest.approx(2.11, abs=0.03)
  p_min = math.sqrt(t[dedx_cm.argmin()] * (t[dedx_cm.argmin()] + 2 * phys.MUON_MASS_MEV))
  assert 3.0 < p_min / phys.MUON_MASS_MEV < 4.2
  assert phys.modbox_recombination(2.12, 0.5) == pytest.approx(0.70, abs=0.01)
  # Recombination falls with dE/dx (heavily ionising protons keep less charge).
  r = phys.modbox_recombination(np.array([2.0, 5.0, 20.0]), 0.5)
  assert np.all(np.diff(r) < 0) and np.all((r > 0) & (r < 1))


def test_straight_muon_mip_dedx():
  # 400 MeV muon (βγ ≈ 4.7-4.3 over 20 cm, next to the Bethe minimum).
  length = 200.0
  exact = _straight_muon(400.0, [-1000.0, 0.0, 1000.0], [0, 0, 1], length,
                         fluctuations=False, multiple_scattering=False,
                         delta_rays=False)
  assert exact.step_mm.sum() == pytest.approx(length)
  # Straight along z: x and y never change.
  np.testing.assert_allclose(exact.position_mm[:, :2], [[-1000.0, 0.0]] * len(exact))
  tables = phys.range_tables()
  r0 = tables.range_of(np.array([phys.MUON]), np.array([400.0]))[0]
  t_end = tables.kinetic_of(np.array([phys.MUON]), np.array([r0 - length]))[0]
  assert exact.energy_mev.sum() == pytest.approx(400.0 - t_end, rel=1e-6)
  dedx = 10 * exact.energy_mev.sum() / length
  assert dedx == pytest.approx(2.12, rel=0.03)

  # With Landau fluctuations and δ-rays the mean is kept (δ-rays add their
  # energy as separate electron tracks), the most probable step is lower.
  # 100 tracks: ~115 δ-rays of 3-21 MeV, a ~2 % spread on the total.
  n = 100
  muons = tr.Particles.make(phys.MUON, [-1000.0, 0.0, 1000.0], [0, 0, 1],
                            np.full(n, 400.0), 0.0, tr.ORIGIN_NEUTRINO,
                            charge=-1, max_length_mm=length)
  full = tr.transport(muons, np.random.default_rng(1),
                      tr.TransportOptions(multiple_scattering=False))
  total = 10 * full.energy_mev.sum() / (n * length)
  assert total == pytest.approx(dedx, rel=0.06)
  on_track = np.abs(full.position_mm[:, 1]) < 1e-9
  per_step = 10 * full.energy_mev[on_track] / full.step_mm[on_track]
  assert np.median(per_step) < per_step.mean()
  assert 1.6 < np.median(per_step) < 2.1


def test_mip_charge_on_collection_wires():
  # A muon along z (perpendicular to the Y wires) 1 m from the anode, at the
  # beam time, rendered at native resolution without noise or threshold.
  length = 300.0
  dep = _straight_muon(400.0, [-1000.0, 0.0, 1000.0], [0, 0, 1], length,
                       fluctuations=False, multiple_scattering=False,
                       delta_rays=False)
  physics = L.SbndPhysics(threshold_adc=0.0, **QUIET)
  images, labels = L.render_deposits(dep, np.random.default_rng(0), height=1280,
                                     width=2048, physics=physics)
  adc_per_wire = images[2].sum(axis=0)
  wires = np.flatnonzero(adc_per_wire)
  inner = wires[5:-5]
  electrons = adc_per_wire[inner] * L.TICKS_PER_ROW / physics.adc_tick_per_electron
  dedx_cm = 10 * dep.energy_mev.sum() / length
  atten = math.exp(-1000.0 / physics.drift_velocity_mm_per_us /
                   physics.electron_lifetime_us)
  expected = (L.WIRE_PITCH_MM * dedx_cm / 10 / phys.LAR_W_ION_MEV *
              phys.modbox_recombination(dedx_cm, 0.5) * atten)
  assert np.median(electrons) == pytest.approx(expected, rel=0.02)
  # Computed: ≈19k e⁻ per 3 mm wire before attenuation (MIP, ModBox, W = 23.6 eV).
  assert np.median(electrons) / atten == pytest.approx(19e3, rel=0.05)
  # Signal-to-noise of the collection peak (expected ≈30-50 for a MIP).
  peak = images[2].max()
  assert 30 < peak / L.SbndPhysics().noise_adc[2] < 60
  # The track is labelled on the row where its charge arrives.
  rows = np.flatnonzero(labels[2].any(axis=1))
  expected_row = int((L.DRIFT_LENGTH_MM - 1000.0) /
                     physics.drift_velocity_mm_per_us / L.ROW_US)
  assert rows.tolist() == [expected_row]


# --------------------------------------------------------------------------
# Generators and transport
# --------------------------------------------------------------------------


def test_cosmic_generator_rate_and_angles():
  counts, dirs, pos = [], [], []
  for i in range(150):
    mu = gen.cosmic_muons(np.random.default_rng(i), mean_cosmics=5.0,
                          window_us=1280.0, readout_us=1700.0)
    counts.append(len(mu))
    dirs.append(mu.direction)
    pos.append(mu.position_mm)
  expected = 5.0 * 2 * 1280.0 / 1700.0
  assert np.mean(counts) == pytest.approx(expected, abs=4 * math.sqrt(expected / 150))
  dirs, pos = np.concatenate(dirs), np.concatenate(pos)
  assert np.all(dirs[:, 1] < 0)  # downward
  # Entry points on the surface of the active volume.
  box = tr.ACTIVE_VOLUME_MM
  on_face = np.isclose(pos, box[0], atol=1e-6) | np.isclose(pos, box[1], atol=1e-6)
  assert on_face.any(axis=1).all()
  # cos²θ intensity: ⟨cosθ⟩ of crossing muons ≈ 0.75 (0.69 for a flat
  # detector face, more for the top-dominated box), never isotropic (0.5).
  assert 0.65 < np.mean(-dirs[:, 1]) < 0.85


def test_neutrino_generator():
  rng = np.random.default_rng(0)
  energies = [gen.neutrino_energy_gev(rng, 0.15) for _ in range(2000)]
  assert np.mean(energies) == pytest.approx(0.8, rel=0.05)
  for kind, lepton in (("numu_cc", phys.MUON), ("nue_cc", phys.ELECTRON)):
    for i in range(10):
      particles, e_nu = gen.neutrino_interaction(np.random.default_rng(i), kind)
      assert particles.species[0] == lepton and e_nu > 0
      assert np.all(particles.origin == tr.ORIGIN_NEUTRINO)
      # Energy conservation: kinetic energies (photons: total) add up to at
      # most E_ν (+ the 0.6 MeV struck-nucleon / proton mass difference).
      assert particles.kinetic_mev.sum() < e_nu * 1000 + 1.0
  found_pi0 = False
  for i in range(60):
    particles, _ = gen.neutrino_interaction(np.random.default_rng(i), "nc")
    assert not np.isin(particles.species, [phys.MUON, phys.ELECTRON]).any()
    photons = particles.select(particles.species == tr.PHOTON)
    if len(photons) == 2:
      found_pi0 = True
      p4 = np.concatenate([photons.kinetic_mev[:, None],
                           photons.kinetic_mev[:, None] * photons.direction], 1)
      tot = p4.sum(0)
      mass = math.sqrt(max(tot[0]**2 - (tot[1:]**2).sum(), 0.0))
      assert mass == pytest.approx(phys.PION0_MASS_MEV, rel=1e-6)
  assert found_pi0


def test_electron_shower_energy_and_extent():
  fractions, lengths = [], []
  for i in range(4):
    e = tr.Particles.make(phys.ELECTRON, [0.0, 0.0, 1500.0], [0, 0, 1], 500.0,
                          0.0, tr.ORIGIN_NEUTRINO, charge=-1)
    dep = tr.transport(e, np.random.default_rng(i))
    fractions.append(dep.energy_mev.sum() / 500.0)
    z = dep.position_mm[:, 2] - 1500.0
    lengths.append(np.percentile(z, 90))
  # Mostly contained (photons < 1 MeV and leakage are lost), never more.
  assert 0.75 < np.mean(fractions) < 1.02
  # A 500 MeV shower reaches several X₀ (14 cm) downstream, not a track's 2 m.
  assert 2 * phys.LAR_RADIATION_LENGTH_MM < np.mean(lengths) < 1500


def test_step_energies_follow_the_range_table():
  # Step k's end energy is step k+1's start energy (one table look-up per
  # boundary); check every step against T(R − s) directly, non-integer step too.
  tables = phys.range_tables()
  for step in (1.0, 0.7):
    tracks = tr.Particles.make(np.array([phys.MUON, phys.PROTON, phys.ELECTRON]),
                               [0.0, 0.0, 1000.0], [0.0, 0.0, 1.0],
                               np.array([300.0, 150.0, 20.0]), 0.0, tr.ORIGIN_COSMIC)
    opts = tr.TransportOptions(step_mm=step, fluctuations=False,
                               multiple_scattering=False, delta_rays=False)
    res = tr.step_tracks(tracks, np.random.default_rng(0), opts)
    r0 = tables.range_of(tracks.species, tracks.kinetic_mev)
    start = 0
    for i, track_r0 in enumerate(r0):
      n = int(math.ceil(track_r0 / step))
      ds = res.deposits.step_mm[start:start + n]
      s_edges = np.concatenate([[0.0], np.cumsum(ds)])
      t_edges = tables.kinetic_of(np.full(n + 1, tracks.species[i]), track_r0 - s_edges)
      t_edges[0] = tracks.kinetic_mev[i]
      np.testing.assert_allclose(res.deposits.energy_mev[start:start + n],
                                 np.maximum(-np.diff(t_edges), 0.0), rtol=1e-9, atol=1e-12)
      assert res.end_kinetic[i] == pytest.approx(t_edges[-1], abs=1e-9)
      start += n
    assert start == len(res.deposits)


def test_transport_is_seeded():
  mu = tr.Particles.make(phys.MUON, [0.0, 2000.0, 2500.0], [0.3, -1, 0.1], 3000.0,
                         0.0, tr.ORIGIN_COSMIC, charge=1)
  a = tr.transport(mu, np.random.default_rng(5))
  b = tr.transport(mu, np.random.default_rng(5))
  c = tr.transport(mu, np.random.default_rng(6))
  np.testing.assert_array_equal(a.position_mm, b.position_mm)
  assert len(a) != len(c) or not np.array_equal(a.energy_mev, c.energy_mev)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def test_fast_render_matches_reference():
  # A few hundred deposits: a track in each half, one crossing the cathode
  # late, near-anode and near-cathode points, cosmic and neutrino origins.
  deps = tr.Deposits.concat([
      _deposits(_line([-1500, -300, 1200], [-900, 200, 1500], 120)),
      _deposits(_line([300, 500, 3000], [1700, 400, 3300], 120), time_us=-40.0),
      _deposits(_line([-150, -100, 2500], [150, 100, 2450], 80), time_us=30.0,
                origin=tr.ORIGIN_NEUTRINO),
      _deposits([[-1995.0, 0.0, 100.0], [1990.0, -1900, 4900.0],
                 [-3.0, 1500.0, 2000.0]], energy_mev=1.0),
  ])
  for height, width, threshold, signal in ((1280, 2048, 0.0, "raw"), (64, 128, 5.0, "raw"),
                                           (64, 128, 5.0, "deconvolved")):
    physics = L.SbndPhysics(threshold_adc=threshold, signal=signal, **QUIET)
    fast_img, fast_lab = L.render_deposits(deps, np.random.default_rng(0),
                                           height=height, width=width,
                                           physics=physics)
    ref_img, ref_lab = L.render_deposits_reference(deps, height=height,
                                                   width=width, physics=physics)
    scale = np.abs(ref_img).max()
    assert (ref_img != 0).sum() > 50
    # Same model, vectorised vs scalar loops: equal to float32 round-off.
    np.testing.assert_allclose(fast_img, ref_img, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(fast_lab, ref_lab)
    for plane in range(3):
      assert set(np.unique(fast_lab[plane])) == {0, 1, 2}


def test_render_into_out_and_scratch_buffers_are_left_zero(monkeypatch):
  # render_deposits sums into per-thread scratch grids that it re-zeroes where
  # it wrote; a leak would add one event's charge to the next.
  deps, _ = L.simulate_event_deposits(3, 0, "nue_cc")
  kw = dict(height=128, width=256)
  img, lab = L.render_deposits(deps, np.random.default_rng(1), **kw)
  assert (img != 0).sum() > 1000 and (lab == 2).any()
  for name in ("mask", "grid_sum", "pooled"):
    assert not getattr(L._THREAD, name).any(), name
  out = (np.zeros((2, 3, 128, 256), np.float32), np.zeros((2, 3, 128, 256), np.uint8))
  for i in range(2):  # into a batch's slices, twice: same result
    got = L.render_deposits(deps, np.random.default_rng(1), out=(out[0][i], out[1][i]), **kw)
    assert np.shares_memory(got[0], out[0][i]) and np.shares_memory(got[1], out[1][i])
    np.testing.assert_array_equal(out[0][i], img)
    np.testing.assert_array_equal(out[1][i], lab)
  with pytest.raises(ValueError, match="out"):
    L.render_deposits(deps, np.random.default_rng(1), out=(img[:, :, :128], lab), **kw)
  with pytest.raises(ValueError, match="out"):
    L.render_deposits(deps, np.random.default_rng(1), out=(img.astype(np.float64), lab), **kw)

  # An error half-way through (scratch grids set) leaves them zeroed.
  def fail(*args, **kwargs):
    raise RuntimeError("interrupted")
  with monkeypatch.context() as m:
    m.setattr(L, "_noise_tail", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
      L.render_deposits(deps, np.random.default_rng(1), **kw)
  again = L.render_deposits(deps, np.random.default_rng(1), **kw)
  np.testing.assert_array_equal(again[0], img)
  np.testing.assert_array_equal(again[1], lab)


def test_rendering_is_block_average_of_native():
  kw = dict(interaction_fractions=(0.0, 1.0, 0.0, 0.0))
  native = L.simulate_sbnd_events(11, 1, height=1280, width=2048, **kw)
  for height, width in ((640, 1024), (64, 128)):
    small = L.simulate_sbnd_events(11, 1, height=height, width=width, **kw)
    br, bc = 1280 // height, 2048 // width
    pooled = native.images.reshape(1, 3, height, br, width, bc).astype(np.float64)
    np.testing.assert_allclose(small.images, pooled.mean(axis=(3, 5)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        small.labels, native.labels.reshape(1, 3, height, br, width, bc).max(axis=(3, 5)))
  # Native pixels are thresholded at 5 ADC: nothing in (0, 5).
  active = native.images[native.images != 0]
  assert np.abs(active).min() >= 5.0
  # Noise-only pixels exist and are label 0, as in real data.
  assert ((native.images != 0) & (native.labels == 0)).sum() > 1000


def test_neutrino_label_wins_overlap():
  cosmic = _deposits(_line([-1000, -1500, 2500], [-1000, 1500, 2500], 3000),
                     origin=tr.ORIGIN_COSMIC)
  nu = _deposits(_line([-1000, 0, 1500], [-1000, 0, 3500], 2000),
                 origin=tr.ORIGIN_NEUTRINO)
  physics = L.SbndPhysics(**QUIET)
  kw = dict(height=640, width=1024, physics=physics)
  _, lab_c = L.render_deposits(cosmic, np.random.default_rng(0), **kw)
  _, lab_n = L.render_deposits(nu, np.random.default_rng(0), **kw)
  _, lab = L.render_deposits(tr.Deposits.concat([cosmic, nu]),
                             np.random.default_rng(0), **kw)
  for plane in range(3):
    both = (lab_c[plane] == 1) & (lab_n[plane] == 2)
    assert both.any()  # the tracks cross in every view
    assert np.all(lab[plane][lab_n[plane] == 2] == 2)
    assert np.all(lab[plane][(lab_c[plane] == 1) & (lab_n[plane] == 0)] == 1)
    assert np.all(lab[plane][(lab_c[plane] == 0) & (lab_n[plane] == 0)] == 0)


def _label_rows(deps, plane=2):
  _, lab = L.render_deposits(deps, np.random.default_rng(0), height=1280,
                             width=2048, physics=L.SbndPhysics(**QUIET))
  return np.flatnonzero(lab[plane].any(axis=1))


def test_drift_halves_and_time_shifts():
  v = L.SbndPhysics().drift_velocity_mm_per_us

  def row_of(x):  # truth row of an in-time point at x
    k = int((L.DRIFT_LENGTH_MM - abs(x)) / v / L.ROW_US)
    return k if x < 0 else L.NATIVE_ROWS - 1 - k

  for x in (-1990.0, -1000.0, -10.0, 10.0, 1000.0, 1990.0):
    rows = _label_rows(_deposits([x, 0.0, 2500.0], energy_mev=1.0))
    assert rows.tolist() == [row_of(x)]
  # Rows grow toward the cathode in the top half and shrink in the bottom one:
  # the electrons drift away from the central row.
  assert row_of(-1990) < row_of(-1000) < row_of(-10) < 640 <= row_of(10) < \
      row_of(1000) < row_of(1990)

  # A late deposit moves toward the central row in both halves, an early one
  # away from it (100 µs = 50 rows).
  for x in (-1000.0, 1000.0):
    toward = -1 if x > 0 else 1
    late = _label_rows(_deposits([x, 0.0, 2500.0], energy_mev=1.0, time_us=100.0))
    early = _label_rows(_deposits([x, 0.0, 2500.0], energy_mev=1.0, time_us=-100.0))
    assert late.tolist() == [row_of(x) + 50 * toward]
    assert early.tolist() == [row_of(x) - 50 * toward]
  # Induction pulses are bipolar with the positive lobe first in time: above
  # the negative lobe in the top half, below it in the bottom half (where time
  # runs upward); collection pulses are unipolar and centred on the arrival.
  # (signal="raw"). Deconvolved (the default): every plane unipolar, centred on the
  # arrival, with the collection plane's charge.
  for x in (-1000.0, 1000.0):
    img, _ = L.render_deposits(
        _deposits([x, 0.0, 2500.0], energy_mev=1.0), np.random.default_rng(0),
        height=1280, width=2048,
        physics=L.SbndPhysics(threshold_adc=0.0, signal="raw", **QUIET))
    for plane in (0, 1):
      profile = img[plane].sum(axis=1)
      first, last = np.flatnonzero(profile > 0), np.flatnonzero(profile < 0)
      assert (first.max() < last.min()) == (x < 0)
      assert abs(profile.sum()) < 1e-3 * np.abs(profile).sum()
    profile = img[2].sum(axis=1)
    assert profile.min() >= 0 and profile.argmax() == row_of(x)
    deconvolved, _ = L.render_deposits(
        _deposits([x, 0.0, 2500.0], energy_mev=1.0), np.random.default_rng(0),
        height=1280, width=2048, physics=L.SbndPhysics(threshold_adc=0.0, **QUIET))
    for plane in range(3):
      profile = deconvolved[plane].sum(axis=1)
      assert profile.min() >= 0 and profile.argmax() == row_of(x)
      np.testing.assert_allclose(profile.sum(), img[2].sum(), rtol=1e-5)
  # Charge arriving after the window (late, near the cathode) is dropped.
  assert _label_rows(_deposits([-10.0, 0.0, 2500.0], energy_mev=1.0,
                               time_us=100.0)).size == 0

  # A track crossing the cathode: continuous in time, a gap when early.
  track = _line([-300.0, 0.0, 2500.0], [300.0, 0.0, 2600.0], 600)
  in_time = _label_rows(_deposits(track))
  assert in_time.min() < 600 and in_time.max() > 680
  assert np.all(np.diff(in_time) == 1)
  early = _label_rows(_deposits(track, time_us=-100.0))
  gap = np.diff(early).max()
  assert gap == pytest.approx(100, abs=2)
  assert early[early < 640].max() == pytest.approx(590, abs=1)


def test_cosmic_only_events_have_no_neutrino_pixels():
  ev = L.simulate_sbnd_events(2, 3, height=64, width=128,
                              interaction_fractions=(1.0, 0.0, 0.0, 0.0))
  assert np.all(ev.interaction == 0)
  assert np.all(ev.neutrino_energy_gev == 0.0)
  assert not (ev.labels == 2).any()
  assert (ev.labels == 1).any()


def test_shapes_dtypes_and_seeding():
  ev = L.simulate_sbnd_events(3, 3, height=64, width=128)
  assert ev.images.shape == (3, 3, 64, 128) and ev.images.dtype == np.float32
  assert ev.labels.shape == (3, 3, 64, 128) and ev.labels.dtype == np.uint8
  assert ev.interaction.dtype == np.int32 and ev.neutrino_energy_gev.dtype == np.float32
  assert set(np.unique(ev.labels)) <= {0, 1, 2}
  assert np.all((ev.interaction >= 0) & (ev.interaction < len(L.INTERACTIONS)))
  nu = ev.interaction > 0
  assert np.all(ev.neutrino_energy_gev[nu] > 0) and np.all(ev.neutrino_energy_gev[~nu] == 0)
  again = L.simulate_sbnd_events(3, 3, height=64, width=128)
  np.testing.assert_array_equal(ev.images, again.images)
  np.testing.assert_array_equal(ev.labels, again.labels)
  # Event i does not depend on num_events.
  two = L.simulate_sbnd_events(3, 2, height=64, width=128)
  np.testing.assert_array_equal(two.images, ev.images[:2])
  other = L.simulate_sbnd_events(4, 3, height=64, width=128)
  assert not np.array_equal(other.images, ev.images)
  assert len(L.simulate_sbnd_events(0, 0, height=64, width=128)) == 0


def test_neutrino_events_have_neutrino_pixels():
  ev = L.simulate_sbnd_events(5, 4, height=128, width=256,
                              interaction_fractions=(0.0, 0.5, 0.5, 0.0))
  assert np.all(np.isin(ev.interaction, [1, 2]))
  assert np.all((ev.labels == 2).sum(axis=(1, 2, 3)) > 0)


def test_occupancies_at_paper_resolution():
  # Mean over neutrino events (6 simulated events at 640×1024, ~2-5 s): the
  # paper's ~11k active, ~2.3k cosmic, ~250 neutrino pixels per plane, each
  # within a factor of 2.
  ev = L.simulate_sbnd_events(0, 6, height=640, width=1024,
                              interaction_fractions=(0.0, 1 / 3, 1 / 3, 1 / 3))
  active = (ev.images != 0).sum(axis=(2, 3)).mean()
  cosmic = (ev.labels == 1).sum(axis=(2, 3)).mean()
  neutrino = (ev.labels == 2).sum(axis=(2, 3)).mean()
  for value, paper in ((active, 11_000), (cosmic, 2_300), (neutrino, 250)):
    assert paper / 2 <= value <= paper * 2, (value, paper)
  # Deconvolved images: positive on every plane, ~11k active pixels on each.
  assert ev.images.min() >= 0
  per_plane = (ev.images != 0).sum(axis=(2, 3)).mean(axis=0)
  assert (per_plane > 0.7 * 11_000).all() and (per_plane < 1.3 * 11_000).all(), per_plane


@pytest.mark.parametrize("kwargs, name", [
    (dict(height=100), "height"),
    (dict(height=5), "height"),
    (dict(width=1000), "width"),
    (dict(width=0), "width"),
    (dict(num_events=-1), "num_events"),
    (dict(seed=-3), "seed"),
    (dict(interaction_fractions=(0.5, 0.5, 0.5, 0.0)), "interaction_fractions"),
    (dict(interaction_fractions=(-0.1, 0.6, 0.25, 0.25)), "interaction_fractions"),
    (dict(interaction_fractions=(0.5, 0.5)), "interaction_fractions"),
    (dict(mean_cosmics=-1.0), "mean_cosmics"),
    (dict(noise_adc=(1.0, 1.0)), "noise_adc"),
    (dict(step_mm=0.0), "step_mm"),
    (dict(not_a_field=1.0), "unknown physics"),
])
def test_bad_arguments(kwargs, name):
  args = dict(seed=0, num_events=1, height=64, width=128)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    L.simulate_sbnd_events(**args)


def test_events_container_validates_shapes():
  with pytest.raises(ValueError, match="labels"):
    L.SbndEvents(images=np.zeros((1, 3, 4, 4), np.float32),
                 labels=np.zeros((1, 3, 4, 5), np.uint8),
                 interaction=np.zeros(1, np.int32),
                 neutrino_energy_gev=np.zeros(1, np.float32))


def test_readout_pieces_keep_the_visible_charge():
  # Cosmic muons cut to their in-window parts render like the whole tracks
  # (deterministic transport; the step grid starts elsewhere, so ≈, not =).
  physics = L.SbndPhysics(fluctuations=False, noise_adc=(0.0, 0.0, 0.0),
                          multiple_scattering=False, delta_rays=False)
  options = physics.transport_options()
  muons = gen.cosmic_muons(np.random.default_rng(3), mean_cosmics=30.0,
                           window_us=L.WINDOW_US, readout_us=1700.0)
  pieces = L._readout_pieces(muons, physics)
  full = tr.transport(muons, np.random.default_rng(0), options)
  cut = tr.transport(pieces, np.random.default_rng(0), options)
  assert len(cut) < 0.7 * len(full)
  kw = dict(height=128, width=256, physics=physics)
  img_f, lab_f = L.render_deposits(full, np.random.default_rng(0), **kw)
  img_c, lab_c = L.render_deposits(cut, np.random.default_rng(0), **kw)
  assert img_c[2].sum() == pytest.approx(img_f[2].sum(), rel=0.01)
  assert (lab_c != lab_f).sum() <= 0.02 * (lab_f > 0).sum()


def test_deconvolved_images_are_positive_thresholded_and_alike_on_all_planes():
  """The default signal is what CosmicTagger files hold: positive, ≥ 5 ADC at the native
  grid on every plane, similar charge on all planes; "raw" keeps bipolar induction."""
  ev = L.simulate_sbnd_events(2, 2, height=1280, width=2048,
                              interaction_fractions=(0.0, 0.5, 0.5, 0.0))
  active = ev.images[ev.images != 0]
  assert active.min() >= 5.0
  charge = ev.images.sum(axis=(2, 3))  # [N, 3]
  np.testing.assert_allclose(charge[:, :2] / charge[:, 2:], 1.0, atol=0.15)
  raw = L.simulate_sbnd_events(2, 2, height=1280, width=2048, signal="raw",
                               interaction_fractions=(0.0, 0.5, 0.5, 0.0))
  induction = raw.images[:, :2][raw.images[:, :2] != 0]
  assert 0.3 < (induction < 0).mean() < 0.7 and np.abs(induction).min() >= 5.0
  # Labels do not depend on the signal model.
  np.testing.assert_array_equal(raw.labels, ev.labels)
  with pytest.raises(ValueError, match="signal"):
    L.SbndPhysics(signal="bipolar")


def test_truth_fields_and_vertex_pixels():
  ev = L.simulate_sbnd_events(1, 6, height=128, width=256,
                              interaction_fractions=(0.25, 0.25, 0.25, 0.25))
  names = [L.INTERACTIONS[k] for k in ev.interaction]
  assert ev.neutrino_pdg.tolist() == [L.INTERACTION_PDG[t] for t in names]
  assert ev.current_type.tolist() == [L.INTERACTION_CURRENT[t] for t in names]
  assert (ev.interaction_mode == -1).all()
  nu = ev.interaction > 0
  assert np.isfinite(ev.vertex_cm[nu]).all() and np.isnan(ev.vertex_cm[~nu]).all()
  for i in np.flatnonzero(nu):
    for p in range(3):  # The vertex sits on the neutrino's pixels.
      pix = np.argwhere(ev.labels[i, p] == 2) + 0.5
      if len(pix):
        assert np.linalg.norm(pix - ev.vertex_pixel[i, p], axis=1).min() < 1.5, (i, p)
