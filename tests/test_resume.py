"""Resumption, early stopping and the trainer's fail-loudly checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, saved_state, subprocess_env
from recoil_jax import train
from recoil_jax.data import pipeline
from recoil_jax.studies.toy import task as toy

RESUME_OVERRIDES = {"train.num_epochs": 3, "train.checkpoint_every_steps": 10,
                    "train.early_stopping_patience": 0}


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _complete_steps(workdir, which="checkpoints"):
  root = os.path.join(workdir, which)
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def _tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_killed_run_resumes_to_identical_result_and_finished_run_is_not_retrained(
    tmp_path, toy_smoke):
  killed = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "recoil_jax.main",
         "--config=configs/toy.py:smoke", f"--workdir={killed}"]
  cmd += [f"--config.{k}={v}" for k, v in RESUME_OVERRIDES.items()]
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not _complete_steps(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  total_steps = 3 * 16
  steps = _complete_steps(killed)
  assert steps, "the run died before writing a checkpoint"
  assert steps[-1] < total_steps, "the run finished before it could be killed"

  for key, value in RESUME_OVERRIDES.items():
    section, field = key.split(".")
    toy_smoke[section][field] = value
  resumed = train.train_and_evaluate(toy_smoke, killed)
  clean_dir = str(tmp_path / "clean")
  clean = train.train_and_evaluate(toy_smoke, clean_dir)
  assert resumed == clean
  step_a, state_a = saved_state(killed, "checkpoints")
  step_b, state_b = saved_state(clean_dir, "checkpoints")
  assert step_a == step_b == total_steps
  assert _tree_equal(state_a, state_b)
  assert saved_state(killed, "best")[0] == saved_state(clean_dir, "best")[0]
  assert _tree_equal(saved_state(killed, "best")[1], saved_state(clean_dir, "best")[1])

  # The resumed run's log reads as if it had never stopped: no repeated steps.
  assert _log(killed) == _log(clean_dir)

  # Running a finished workdir again evaluates but does not train; the log is unchanged.
  log = _log(clean_dir)
  ckpt_steps = _complete_steps(clean_dir)
  again = train.train_and_evaluate(toy_smoke, clean_dir)
  assert again == clean
  assert _log(clean_dir) == log
  assert _complete_steps(clean_dir) == ckpt_steps


def _log(workdir):
  """metrics.jsonl without wall-clock times."""
  return [{k: v for k, v in e.items() if k != "time"} for e in _events(workdir)]


def test_more_epochs_extend_a_finished_run_as_if_unbroken(tmp_path, toy_smoke):
  """1 epoch, then the same workdir with 3: the same weights, metrics and log as 3 epochs
  in one go (constant learning rate; the log window open at the checkpoint carries on)."""
  toy_smoke.train.early_stopping_patience = 0
  toy_smoke.train.num_epochs = 1
  extended = str(tmp_path / "extended")
  train.train_and_evaluate(toy_smoke, extended)
  toy_smoke.train.num_epochs = 3
  result = train.train_and_evaluate(toy_smoke, extended)
  clean = train.train_and_evaluate(toy_smoke, str(tmp_path / "clean"))
  assert result == clean
  assert _tree_equal(saved_state(extended, "checkpoints")[1],
                     saved_state(str(tmp_path / "clean"), "checkpoints")[1])
  assert _log(extended) == _log(str(tmp_path / "clean"))
  with open(os.path.join(extended, "config.json")) as f:
    assert json.load(f)["train"]["num_epochs"] == 3


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_resumed(
    tmp_path, toy_smoke):
  clean = train.train_and_evaluate(toy_smoke, str(tmp_path / "clean"))
  workdir = str(tmp_path / "broken")
  train.train_and_evaluate(toy_smoke, workdir)
  steps = _complete_steps(workdir)
  latest = os.path.join(workdir, "checkpoints", str(steps[-1]), "state")
  for root, _, files in os.walk(latest):  # Truncate every data file of the newest step.
    for name in files:
      if os.sep + "d" in root:
        os.truncate(os.path.join(root, name), 16)
  again = train.train_and_evaluate(toy_smoke, workdir)
  assert again == clean  # Resumed from the step before and trained the rest again.
  aside = os.listdir(os.path.join(workdir, "checkpoints.unreadable"))
  assert [a.split("-")[0] for a in aside] == [str(steps[-1])]
  assert _complete_steps(workdir) == steps


def test_a_workdir_of_another_config_is_refused_before_anything_is_restored(
    tmp_path, toy_smoke):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(toy_smoke, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    before = f.read()
  toy_smoke.model.hidden = 32
  toy_smoke.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r"(?s)model.hidden: 64 -> 32.*"
                                       r"optimizer.learning_rate: 0.001 -> 0.5"):
    train.train_and_evaluate(toy_smoke, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == before


class AntiValidationTask(toy.ToyRegressionTask):
  """Validation labels are reversed: the better the fit, the worse the validation loss."""

  def eval_sources(self):
    sources = super().eval_sources()
    val = sources["validation"]
    n = len(val)
    flipped = toy.ArraySource({
        "features": np.stack([val[i]["features"] for i in range(n)]),
        "direction": -np.stack([val[i]["direction"] for i in range(n)])})
    return {"validation": flipped, "test": sources["test"]}


def test_early_stopping_keeps_and_restores_the_best_weights(tmp_path, toy_smoke):
  toy_smoke.train.num_epochs = 6
  toy_smoke.train.early_stopping_patience = 2
  toy_smoke.optimizer.learning_rate = 3e-3
  workdir = str(tmp_path / "es")
  result = train.train_and_evaluate(toy_smoke, workdir, task=AntiValidationTask(toy_smoke))
  evals = [e for e in _events(workdir) if e["event"] == "eval"]
  losses = [e["metrics"]["loss"] for e in evals]
  assert len(evals) == 3  # Best at epoch 1, then 2 epochs without improvement.
  assert losses[1] > losses[0] and losses[2] > losses[0]
  assert result["validation"]["loss"] == pytest.approx(losses[0], rel=1e-6)
  assert saved_state(workdir, "best")[0] == 16
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  assert final["stop_reason"].startswith("early stopping")
  assert final["step"] == 48 and final["best_step"] == 16


class _MarkedSource:
  """Wraps a source: example ``bad_index`` gets ``features`` NaN (or a ``flag`` of 1)."""

  def __init__(self, source, bad_index: int, mode: str):
    self.source, self.bad_index, self.mode = source, bad_index, mode

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = dict(self.source[i])
    if self.mode == "nan":
      if i == self.bad_index:
        ex["features"] = np.full_like(ex["features"], np.nan)
    else:
      ex["flag"] = np.float32(i == self.bad_index)
    return ex


class MarkedTask(toy.ToyRegressionTask):
  """Toy task whose training example ``bad_index`` is poisoned (mode "nan" or "flag")."""

  def __init__(self, config, bad_index: int, mode: str):
    super().__init__(config)
    self.mode = mode
    self.marked = _MarkedSource(super().train_source(), bad_index, mode)

  def train_source(self):
    return self.marked

  def loss_terms(self, outputs, batch):
    terms = super().loss_terms(outputs, batch)
    if "flag" in batch:
      terms["error/flagged_examples"] = (jnp.sum(batch["flag"] * batch["mask"]), jnp.float32(1))
    return terms

  def eval_sources(self):
    if self.mode == "flag":  # Eval examples need the same fields.
      return {k: _MarkedSource(v, -1, "flag") for k, v in super().eval_sources().items()}
    return super().eval_sources()


def _first_step_containing(task, config, field, predicate):
  ds = pipeline.train_batches(task.train_source(), global_batch_size=config.train.global_batch_size,
                              seed=config.seed, process_index=0, process_count=1,
                              num_epochs=config.train.num_epochs)
  return next(s for s in range(len(ds)) if predicate(ds[s][field]))


@pytest.mark.parametrize("mode", ["nan", "flag"])
def test_bad_step_raises_naming_the_step(tmp_path, toy_smoke, mode):
  task = MarkedTask(toy_smoke, bad_index=100, mode=mode)
  if mode == "nan":
    step = _first_step_containing(task, toy_smoke, "features", lambda x: np.isnan(x).any())
    error, pattern = FloatingPointError, rf"Non-finite loss .* at training step {step} "
  else:
    step = _first_step_containing(task, toy_smoke, "flag", lambda x: x.sum() > 0)
    error, pattern = RuntimeError, (rf"'error/flagged_examples' = 1.0 > 0 at training step "
                                    rf"{step} ")
  assert step > 0
  with pytest.raises(error, match=pattern):
    train.train_and_evaluate(toy_smoke, str(tmp_path / mode), task=task)
  # Nothing at or after the bad step was checkpointed.
  assert all(s <= step for s in _complete_steps(str(tmp_path / mode)))
