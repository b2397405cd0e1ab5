"""The TPC task wiring: config variants, DEGRAD-file data through the task, loss terms."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from recoil_jax import train
from recoil_jax.studies.tpc import degrad
from recoil_jax.physics import electron_recoils as electron_recoil
from recoil_jax.studies.tpc import task as tpc


def test_variants_compose_and_unknown_variant_fails():
  config = load_config("configs/tpc.py", "smoke+homoscedastic+deep")
  assert config.model.head == "cosine" and config.model.trunk == "deep"
  assert config.train.num_epochs == 1
  with pytest.raises(ValueError, match="no_such_variant"):
    load_config("configs/tpc.py", "no_such_variant")
  with pytest.raises(AttributeError):
    load_config("configs/tpc.py", "smoke").model.no_such_key = 1


def test_degrad_files_feed_the_task(tmp_path):
  """DEGRAD-format files (npz, cm) replace the simulator; splits come from the globs."""
  for energy in (40, 50):
    tracks = electron_recoil.simulate_electron_recoils(energy, float(energy), num_tracks=20)
    degrad.write_electron_npz(tmp_path / f"degrad_{energy}keV.npz",
                                      [tracks.track(i) / 10.0 for i in range(len(tracks))])
  config = load_config("configs/tpc.py", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.degrad_files.train_val = str(tmp_path / "degrad_*keV.npz")
  config.data.degrad_files.test_40keV_200um = str(tmp_path / "degrad_40keV.npz")
  config.data.degrad_files.test_50keV_443um = str(tmp_path / "degrad_50keV.npz")
  task = tpc.TpcDirectionTask(config)
  train, evals = task.train_source(), task.eval_sources()
  assert len(train) + len(evals["validation"]) <= 40
  assert len(evals["test_40keV_200um"]) == 20  # 40 keV tracks always fit the grid.
  example = evals["test_50keV_443um"][0]
  assert example["coords"].shape == (config.data.max_voxels, 3)
  assert float(example["sigma_um"]) == pytest.approx(443.0)
  np.testing.assert_allclose(np.linalg.norm(example["direction"]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("head", ["cosine", "vmf", "kent"])
def test_loss_terms_honour_the_mask_and_report_overflow(head):
  config = load_config("configs/tpc.py", "smoke")
  config.model.head = head
  task = tpc.TpcDirectionTask(config)
  label = jnp.asarray([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  outputs = {"pred_direction": jnp.asarray([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
             "kappa": jnp.asarray([10.0, 10.0]), "beta": jnp.asarray([1.0, 1.0]),
             "frame": jnp.stack([jnp.eye(3)[jnp.asarray([2, 0, 1])],
                                 jnp.eye(3)[jnp.asarray([1, 2, 0])]]),
             "overflow": jnp.asarray([3, 3], jnp.int32)}
  masked = task.loss_terms(outputs, {"direction": label, "mask": jnp.asarray([1.0, 0.0])})
  full = task.loss_terms(outputs, {"direction": label, "mask": jnp.asarray([1.0, 1.0])})
  assert float(masked["cosine_loss"][0]) == pytest.approx(-1.0)  # Only the perfect event.
  assert float(full["cosine_loss"][0]) == pytest.approx(-1.0)  # The other scores 0.
  assert float(masked["loss"][1]) == 1.0 and float(full["loss"][1]) == 2.0
  assert float(masked["error/sparse_capacity_overflow"][0]) == 3.0


@pytest.mark.parametrize("head", ["cosine", "kent"])
def test_model_heads_on_simulated_tracks(head):
  """Every head runs on real (simulated, preprocessed) tracks; the vMF head runs in the
  README smoke test. Outputs are unit directions, κ > 0, 2β < κ, a proper frame."""
  from recoil_jax.studies.tpc import preprocess as tpc_preprocess
  from recoil_jax.studies.tpc import model as tpc_model
  import jax

  # 20 tracks as in test_degrad_files_feed_the_task: the simulator's compiled chunk is reused.
  tracks = electron_recoil.simulate_electron_recoils(40, 40.0, num_tracks=20)
  vox, _ = tpc_preprocess.preprocess_tracks(
      tracks.positions_mm[:2], tracks.num_electrons[:2], tracks.energy_kev[:2],
      np.random.default_rng(0), sigma_um=200.0, max_voxels=1152)
  batch = {"coords": jnp.asarray(vox.coords), "charges": jnp.asarray(vox.charges),
           "num_voxels": jnp.asarray(vox.num_voxels)}
  model = tpc_model.TpcDirectionNet(head=head)
  # Jitted, as the trainer runs it: op-by-op sparse layers take longer than one compilation.
  out = jax.jit(model.apply)(jax.jit(model.init)(jax.random.PRNGKey(0), batch), batch)
  np.testing.assert_allclose(np.linalg.norm(out["pred_direction"], axis=-1), 1.0, rtol=1e-5)
  assert int(out["overflow"][0]) == 0
  if head == "kent":
    assert np.all(out["kappa"] > 0) and np.all(2 * out["beta"] < out["kappa"])
    frame = np.asarray(out["frame"])
    np.testing.assert_allclose(frame @ frame.transpose(0, 2, 1), np.eye(3)[None].repeat(2, 0),
                               atol=1e-5)
  else:
    assert "kappa" not in out


def test_bad_paths_and_names_fail_before_any_data_is_built(tmp_path):
  """validate() runs before the first step: a homoscedastic workdir without predictions,
  a DEGRAD glob matching nothing and unknown head/trunk names are errors naming the key,
  and nothing is simulated or written first."""
  config = load_config("configs/tpc.py", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.analysis.homoscedastic_workdir = str(tmp_path / "no_run")
  with pytest.raises(FileNotFoundError, match="config.analysis.homoscedastic_workdir"):
    train.train_and_evaluate(config, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "tfds")
  config.analysis.homoscedastic_workdir = ""
  config.data.degrad_files.train_val = str(tmp_path / "none_*.root")
  with pytest.raises(FileNotFoundError, match="config.data.degrad_files.train_val"):
    tpc.TpcDirectionTask(config).validate()
  config.data.degrad_files.train_val = ""
  config.model.head = "gaussian"
  with pytest.raises(ValueError, match="config.model.head='gaussian'.*'cosine', 'kent', 'vmf'"):
    tpc.TpcDirectionTask(config).validate()
  config.model.head, config.model.trunk = "vmf", "wide"
  with pytest.raises(ValueError, match="config.model.trunk='wide'"):
    tpc.TpcDirectionTask(config).validate()


def test_simulator_physics_switches_reach_the_dataset(monkeypatch):
  """config.data.sim_physics is handed to the dataset builder (None with DEGRAD files)."""
  calls = []
  monkeypatch.setattr(tpc.tpc_dataset, "build_tpc_dataset",
                      lambda data_dir, **kw: calls.append(kw) or object())
  config = load_config("configs/tpc.py", "smoke")
  tpc.TpcDirectionTask(config)._dataset()
  assert calls[-1]["sim_physics"] == dict(delta_rays=True, straggling=True,
                                          electron_spread=True, delta_cut_kev=1.0,
                                          elastic_scale=1.0)
  config = load_config("configs/tpc.py", "smoke+toy")
  with config.unlocked():
    config.data.sim_physics.delta_rays = True
  tpc.TpcDirectionTask(config)._dataset()
  assert calls[-1]["sim_physics"]["delta_rays"] is True
  assert calls[-1]["sim_physics"]["straggling"] is False
