"""The authors' final model as the mean of late checkpoints (studies/newsdm/ensemble.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from scipy import special

from conftest import REPO_ROOT, load_config, subprocess_env
from recoil_jax import checkpointing
from recoil_jax import parallel
from recoil_jax import train
from recoil_jax.studies.newsdm import ensemble
from recoil_jax.studies.newsdm import task as newsdm_task


def test_mean_signal_logit_is_the_logit_of_the_mean_probability():
  l = np.array([[0.3, -2.0, 5.0], [1.1, 0.5, -1.0]])
  p = special.expit(l).mean(0)
  np.testing.assert_allclose(ensemble.mean_signal_logit(l), np.log(p / (1 - p)), rtol=1e-12)
  np.testing.assert_allclose(ensemble.mean_signal_logit(l[:1]), l[0], rtol=1e-12)
  # Deep in the signal region (1 − p underflows in float32) the score stays finite and
  # ordered: mean(1 − p) = mean(exp(−l)) there.
  far = np.array([[40.0, 60.0], [45.0, 70.0]], np.float32)
  got = ensemble.mean_signal_logit(far)
  np.testing.assert_allclose(got, -np.log(np.exp(-far.astype(np.float64)).mean(0)), rtol=1e-9)
  assert got[1] > got[0]
  with pytest.raises(ValueError, match="K >= 1"):
    ensemble.mean_signal_logit(np.zeros(3))


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, batch, train: bool):
    del train
    return {"signal_logit": nn.Dense(1)(batch["image"])[:, 0]}


def test_late_variables_restores_the_last_k_checkpoints_in_order(tmp_path):
  device = jax.local_devices()[0]
  mesh = parallel.make_mesh([device])
  example = {"image": np.ones((2, 3), np.float32), "mask": np.ones((2,), np.float32)}
  state = train.create_train_state(_Tiny(), optax.adam(1e-3), example, 0, mesh, ())
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=None)
  for step in (2, 4, 6):  # Weights = step, so that each restored set is recognisable.
    params = jax.tree.map(lambda x, s=step: x * 0 + s, state.params)
    ckpt.save(step, state.replace(params=params), {"step": step})
  ckpt.close()
  single = jax.sharding.SingleDeviceSharding(device)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                        jax.eval_shape(lambda: state))
  directory = ensemble.checkpoint_directory(str(tmp_path / "evaluation"))  # Its parent's.
  assert directory == str(tmp_path / "checkpoints")
  members = ensemble.late_variables(directory, target, 2)
  assert [s for s, _ in members] == [4, 6]
  kernel = lambda v: np.asarray(v["params"]["Dense_0"]["kernel"])  # noqa: E731
  assert np.all(kernel(members[0][1]) == 4) and np.all(kernel(members[1][1]) == 6)
  batch = [{"image": np.full((3,), i, np.float32)} for i in range(5)]
  logits = ensemble.signal_logits(_Tiny(), [v for _, v in members], batch, batch_size=2)
  # Dense(1) with kernel = bias = s: logit = s·(3i + 1); the padded last batch is dropped.
  np.testing.assert_allclose(logits, [[4 * (3 * i + 1) for i in range(5)],
                                      [6 * (3 * i + 1) for i in range(5)]], rtol=1e-6)
  with pytest.raises(FileNotFoundError, match="max_checkpoints_to_keep"):
    ensemble.late_variables(directory, target, 4)


def test_config_refuses_more_checkpoints_than_kept():
  assert load_config("configs/newsdm.py", "mean10").analysis.average_last_checkpoints == 10
  config = load_config("configs/newsdm.py", "smoke")
  config.analysis.average_last_checkpoints = 5
  with pytest.raises(ValueError, match="max_checkpoints_to_keep"):
    newsdm_task.NewsdmTask(config).validate()


@pytest.mark.slow  # 40–100 s on 2 shared cores: a launcher smoke run, two checkpoints averaged.
def test_launcher_scores_with_the_mean_of_late_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, "-m", "recoil_jax.main", "--config=configs/newsdm.py:smoke+plain",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.train.checkpoint_every_steps=2", "--config.train.max_checkpoints_to_keep=3",
       "--config.analysis.average_last_checkpoints=2"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "newsdm_analysis.json")) as f:
    analysis = json.load(f)
  assert len(analysis["checkpoint_mean_steps"]) == 2
  pair = analysis["pairs"]["test_c100_beam0/test_fog"]
  assert 0 <= pair["nn_mean"]["auc"] <= 1
  with np.load(os.path.join(workdir, "scores_test_fog.npz")) as f:
    assert f["signal_logit_mean"].shape == (48,)
    assert np.all(np.isfinite(f["signal_logit_mean"]))
  text = open(os.path.join(workdir, "newsdm_rejection.md")).read()
  assert "NN, mean of 2 checkpoints" in text
