"""The NEWSdm toy simulator: shapes, seeding, streaming and the physics it claims."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from recoil_jax.studies.newsdm import barycentre
from recoil_jax.studies.newsdm import sim


def test_shapes_dtypes_and_seeding():
  ev = sim.simulate(3, 12, ("c100", "fog", "gamma"))
  assert ev["raw"].shape == (12, 40, 40, 8) and ev["raw"].dtype == np.uint8
  assert list(ev["kind"][:3]) == [2, 3, 4]
  again = sim.simulate(3, 12, ("c100", "fog", "gamma"))
  assert all(np.array_equal(ev[k], again[k], equal_nan=True) for k in ev)
  other = sim.simulate(4, 12, ("c100", "fog", "gamma"))
  assert not np.array_equal(ev["raw"], other["raw"])
  assert np.isnan(ev["beam_angle_deg"][1]) and ev["beam_angle_deg"][0] == 0


def test_streaming_chunks_are_regenerable_and_lazy():
  stream = sim.iter_chunks(7, 25, "fog", chunk_size=10, stream=2)
  assert inspect.isgenerator(stream)  # One chunk at a time, never the whole sample.
  chunks = list(stream)
  assert [len(c["kind"]) for c in chunks] == [10, 10, 5]
  alone = sim.simulate(sim.chunk_seed(7, 2, 1), 10, "fog")
  assert np.array_equal(chunks[1]["raw"], alone["raw"])


def test_unknown_kind_and_parameter_are_errors():
  with pytest.raises(ValueError, match="unknown kind"):
    sim.simulate(0, 2, "neutron")
  with pytest.raises(ValueError, match="unknown parameter"):
    sim.simulate(0, 2, "fog", params={"no_such": 1.0})


def test_carbon_ranges_grains_and_beam_direction():
  rng = np.random.default_rng(0)
  means = {}
  for kind in sim.SIGNAL_KINDS:
    sc = sim.sample_scenes(rng, sim.kind_codes(kind, 3000), beam_angle_deg=45.0)
    means[kind] = (sc.length_nm.mean(), sc.num_grains.mean())
    # Beam-directional: the circular mean of the track direction points along the beam.
    mean_dir = np.angle(np.mean(np.exp(1j * sc.direction_rad)))
    assert np.degrees(mean_dir) == pytest.approx(45.0, abs=3.0)
  # Projected lengths below the 3D ranges (102 / 180 / 270 nm), ordered by energy.
  assert means["c30"][0] < means["c60"][0] < means["c100"][0] < 270
  assert means["c100"][0] > 0.75 * 270 * 0.85  # Beam in the plane: projection ≈ 0.85.
  assert 1.4 < means["c30"][1] < means["c60"][1] < means["c100"][1] < 3.2


def test_carbon_ranges_come_from_the_core_ion_stopping_module():
  from recoil_jax.physics import ions  # pylint: disable=g-import-not-at-top
  target = sim.NIT_EMULSION
  assert target.density_g_cm3 == pytest.approx(3.4)
  by_symbol = {el.symbol: n * el.A for el, n in zip(target.elements, target.atoms_per_cm3)}
  total = sum(by_symbol.values())
  assert by_symbol["Ag"] / total == pytest.approx(0.44) and by_symbol["Br"] / total == (
      pytest.approx(0.32))
  expected = ions.projected_range_mm(ions.CARBON_ION, target, np.array([30.0, 60.0, 100.0]))
  got = [sim.CARBON_RANGE_NM[e] for e in (30.0, 60.0, 100.0)]
  np.testing.assert_allclose(got, expected * 1e6, rtol=1e-12)
  # LSS + ZBL against the 270 nm measured at 100 keV (arXiv 1812.09528), and the ordering.
  np.testing.assert_allclose(got, [101.5, 180.0, 269.1], atol=0.1)
  # The simulator samples about them: an exactly in-plane beam (no spread) projects the
  # whole length, whose lognormal mean is the module's range.
  sc = sim.sample_scenes(np.random.default_rng(5), sim.kind_codes("c100", 4000),
                         params=sim.SimParams(beam_spread_deg=0.0))
  assert sc.length_nm.mean() == pytest.approx(sim.CARBON_RANGE_NM[100.0], rel=0.03)


def test_backgrounds_are_isotropic_and_fog_is_one_grain():
  rng = np.random.default_rng(1)
  sc = sim.sample_scenes(rng, sim.kind_codes("gamma", 4000))
  d = sc.direction_rad[np.isfinite(sc.direction_rad)]
  assert len(d) > 1000 and abs(np.mean(np.exp(1j * d))) < 0.06
  fog = sim.sample_scenes(rng, sim.kind_codes("fog", 200))
  assert np.all(fog.num_grains == 1) and np.all(fog.in_event.sum(1) == 1)


def test_polarisation_moves_a_track_barycentre_along_it_not_a_single_grain():
  rng = np.random.default_rng(2)
  params = sim.SimParams(fog_density_per_um3=0.0)
  fog = sim.sample_scenes(rng, sim.kind_codes("fog", 50), params=params)
  assert barycentre.max_shift_nm(sim.expected_images(fog, params)).max() < 0.5
  ions = sim.sample_scenes(rng, sim.kind_codes("c100", 400), params=params)
  images = sim.expected_images(ions, params)
  shift = barycentre.max_shift_nm(images)
  multi = ions.num_grains >= 3
  assert np.median(shift[multi]) > 5.0
  # The barycentre moves along the projected track (grains lie on a line).
  b = barycentre.barycentres_nm(images)[multi]
  step = b[:, :, :] - b.mean(axis=1, keepdims=True)
  theta = ions.direction_rad[multi]
  along = np.abs(step[..., 0] * np.cos(theta)[:, None] + step[..., 1] * np.sin(theta)[:, None])
  across = np.abs(-step[..., 0] * np.sin(theta)[:, None] + step[..., 1] * np.cos(theta)[:, None])
  assert np.median(along) > 3 * np.median(across)


def test_brightness_response_has_period_180_and_cancels_over_the_8_angles():
  rng = np.random.default_rng(3)
  sc = sim.sample_scenes(rng, sim.kind_codes("c60", 20))
  b = sim.grain_brightness(sc)
  np.testing.assert_allclose(b.mean(-1), np.where(sc.valid, sc.photons, 0), rtol=1e-12)
  turned = sim.grain_brightness(sim.rotate_scenes(sc, 180.0))
  np.testing.assert_allclose(turned, b, rtol=1e-9, atol=1e-9)


def test_rotating_by_90_degrees_moves_the_image_and_cycles_four_polarisations():
  rng = np.random.default_rng(4)
  sc = sim.sample_scenes(rng, sim.kind_codes("c100", 5))
  im = sim.expected_images(sc)
  rot = sim.expected_images(sim.rotate_scenes(sc, 90.0))
  # out(x, y) = in(R⁻¹(x, y)) for a quarter turn: out[r, c] = in[c, W − 1 − r].
  expected = np.roll(np.swapaxes(im, 1, 2)[:, :, ::-1], 4, axis=-1)
  np.testing.assert_allclose(rot, expected, atol=1e-4 * im.max())


def test_sim_params_field_names_are_what_the_config_exposes():
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  physics = dict(load_config("configs/newsdm.py").data.physics)
  defaults = {f.name: f.default for f in dataclasses.fields(sim.SimParams)}
  assert physics == defaults
