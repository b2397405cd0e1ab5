"""Tests of the data pipeline, optimiser config, task registry and the trainer's steps."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import saved_state
from recoil_jax import config_lib
from recoil_jax import parallel
from recoil_jax import tasks
from recoil_jax import train
from recoil_jax.data import pipeline
from recoil_jax.studies.toy import task as toy


class IdSource:
  """Examples ``{"id": int32 [], "x": float32 [2]}``."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"id": np.int32(i), "x": np.full((2,), i, np.float32)}


# ----------------------------------------------------------------------------- pipeline


def test_train_batches_epochs_are_permutations_with_remainder_dropped():
  src = IdSource(50)
  ds = pipeline.train_batches(src, global_batch_size=8, seed=3, process_index=0,
                              process_count=1, num_epochs=3)
  assert len(ds) == 3 * 6  # 50 // 8 = 6 steps per epoch; 2 examples dropped per epoch.
  epochs = []
  for e in range(3):
    ids = np.concatenate([ds[e * 6 + k]["id"] for k in range(6)])
    assert len(set(ids.tolist())) == 48  # No repeats inside an epoch.
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])  # A new permutation per epoch.
  batch = ds[7]
  np.testing.assert_array_equal(batch["mask"], np.ones(8, np.float32))
  assert batch["x"].shape == (8, 2) and batch["x"].dtype == np.float32
  # Deterministic, and iteration from an arbitrary step yields the same batches.
  np.testing.assert_array_equal(ds[7]["id"], pipeline.train_batches(
      src, global_batch_size=8, seed=3, process_index=0, process_count=1, num_epochs=3)[7]["id"])
  it = pipeline.iterate(ds, 7, num_threads=2, prefetch=2)
  for s in range(7, 18):
    np.testing.assert_array_equal(next(it)["id"], ds[s]["id"])
  with pytest.raises(StopIteration):
    next(it)


def test_train_batches_global_batch_independent_of_process_count():
  src = IdSource(40)
  kw = dict(global_batch_size=8, seed=1, num_epochs=2)
  single = pipeline.train_batches(src, process_index=0, process_count=1, **kw)
  hosts = [pipeline.train_batches(src, process_index=p, process_count=4, **kw) for p in range(4)]
  for s in range(len(single)):
    parts = [h[s]["id"] for h in hosts]
    assert all(len(p) == 2 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), single[s]["id"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_visit_every_example_once_with_padding(process_count):
  src = IdSource(21)
  per_host = [list(pipeline.eval_batches(src, global_batch_size=8, process_index=p,
                                         process_count=process_count))
              for p in range(process_count)]
  assert all(len(b) == 3 for b in per_host)  # ceil(21 / 8), same on every process.
  ids, masks = [], []
  for b in range(3):
    for p in range(process_count):
      ids.append(per_host[p][b]["id"])
      masks.append(per_host[p][b]["mask"])
  ids, masks = np.concatenate(ids), np.concatenate(masks)
  assert masks.dtype == np.float32 and masks.sum() == 21
  np.testing.assert_array_equal(ids[masks == 1], np.arange(21))
  assert np.all(masks[:21] == 1) and np.all(masks[21:] == 0)


def test_pipeline_errors_name_the_problem():
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    pipeline.train_batches(IdSource(40), global_batch_size=6, seed=0, process_index=0,
                           process_count=4, num_epochs=1)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.train_batches(IdSource(5), global_batch_size=8, seed=0, process_index=0,
                           process_count=1, num_epochs=1)
  with pytest.raises(ValueError, match="steps_per_epoch=9"):
    pipeline.train_batches(IdSource(40), global_batch_size=8, seed=0, process_index=0,
                           process_count=1, num_epochs=1, steps_per_epoch=9)
  bad = [{"x": np.zeros(2)}, {"x": np.zeros(3)}]
  with pytest.raises(ValueError, match=r"val\[7\]\['x'\] has shape \(3,\)"):
    pipeline.stack_examples(bad, name="val", indices=[6, 7])


# ----------------------------------------------------------------------------- config, registry


def test_base_config_has_seed_optimizer_and_make_optimizer_matches_optax():
  config = config_lib.base_config()
  opt = config.optimizer
  assert (opt.name, opt.learning_rate, opt.b1, opt.b2, opt.eps) == ("adam", 1e-3, 0.9, 0.999, 1e-8)
  assert config.train.early_stopping_patience == 2
  opt.b1, opt.eps, opt.learning_rate = 0.94, 1e-7, 1e-4  # Non-default betas must reach optax.
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  grads = {"w": jnp.array([0.5, 0.1, -4.0])}
  ours = config_lib.make_optimizer(opt, total_steps=10)
  ref = optax.adam(1e-4, b1=0.94, b2=0.999, eps=1e-7)
  for _ in range(2):  # Two steps so that the betas matter.
    u1, s1 = ours.update(grads, ours.init(params) if _ == 0 else s1, params)
    u2, s2 = ref.update(grads, ref.init(params) if _ == 0 else s2, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
  opt.unlock()
  opt.name = "lion"
  with pytest.raises(ValueError, match="optimizer.name='lion'"):
    config_lib.make_optimizer(opt, 10)
  opt.name, opt.schedule, opt.warmup_steps, opt.learning_rate = "sgd", "warmup_cosine", 4, 0.1
  sched = config_lib.make_schedule(opt, 20)
  assert float(sched(0)) == 0.0 and float(sched(4)) == pytest.approx(0.1)
  assert float(sched(20)) == pytest.approx(0.0, abs=1e-7)


def test_locked_config_rejects_unknown_keys(toy_smoke):
  with pytest.raises(AttributeError, match="no_such_key"):
    toy_smoke.no_such_key = 1


def test_tasks_are_found_by_study_folder(toy_smoke):
  assert isinstance(tasks.get_task(toy_smoke), toy.ToyRegressionTask)
  assert {"toy", "tpc", "sbnd"} <= set(tasks.study_names())
  assert tasks.get_task_class("recoil_jax.studies.toy.task") is toy.ToyRegressionTask
  toy_smoke.task = "nope"
  with pytest.raises(KeyError, match=r"no module recoil_jax.studies.nope.task.*'toy'"):
    tasks.get_task(toy_smoke)


# ----------------------------------------------------------------------------- steps


def _setup(config, batch_size: int):
  task = tasks.get_task(config)
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = task.build_model()
  tx = optax.sgd(1.0)
  src = task.train_source()
  example = pipeline.stack_examples([src[i] for i in range(batch_size)], name="train",
                                    indices=list(range(batch_size)))
  example["mask"] = np.ones((batch_size,), np.float32)
  state = train.create_train_state(model, tx, example, 0, mesh)
  return task, mesh, model, state, example


def _direct_loss(model, params, model_state, batch):
  out = model.apply({"params": params, **model_state}, batch, train=False)
  cos = jnp.sum(out["direction"] * batch["direction"], -1)
  return jnp.sum(-cos * batch["mask"]) / jnp.sum(batch["mask"])


def test_train_step_is_sgd_on_the_global_masked_mean(toy_smoke):
  toy_smoke.model.dropout_rate = 0.0
  toy_smoke.model.batch_norm = False
  task, mesh, model, state, batch = _setup(toy_smoke, 16)
  batch["mask"][10:] = 0.0  # Padding must not contribute.
  params0 = jax.tree.map(np.asarray, state.params)
  loss, grads = jax.value_and_grad(_direct_loss, argnums=1)(model, params0, {}, batch)
  step = train.make_train_step(model, task, mesh, optax.constant_schedule(1.0))
  new_state, metrics = step(state, parallel.shard_batch(batch, mesh))
  assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
  jax.tree.map(lambda new, p, g: np.testing.assert_allclose(new, p - g, atol=1e-6),
               jax.tree.map(np.asarray, new_state.params), params0, grads)
  assert int(new_state.step) == 1


def test_evaluate_and_predict_are_exact_under_padding(toy_smoke):
  toy_smoke.model.dropout_rate = 0.0
  task, mesh, model, state, _ = _setup(toy_smoke, 4)
  test_src = task.eval_sources()["test"]  # 48 examples; batch 20 -> 12 padded.
  full = pipeline.stack_examples([test_src[i] for i in range(len(test_src))], name="test",
                                 indices=list(range(len(test_src))))
  full["mask"] = np.ones((len(test_src),), np.float32)
  expected = _direct_loss(model, state.params, state.model_state, full)
  metrics = train.evaluate(train.make_eval_step(model, task, mesh), state, test_src,
                           name="test", global_batch_size=20, mesh=mesh)
  assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
  trained = train.make_trained(model, state, task.eval_sources(), step=0, eval_batch_size=20)
  pred = trained.predict("test")
  assert sorted(pred) == ["direction", "features", "outputs"]
  np.testing.assert_array_equal(pred["direction"], full["direction"])
  direct = model.apply({"params": state.params, **state.model_state}, full, train=False)
  np.testing.assert_allclose(pred["outputs"]["direction"], direct["direction"], atol=1e-6)
  assert sorted(trained.predict("validation", fields=("direction",))) == ["direction", "outputs"]
  selected = trained.predict("test", outputs=("direction",), fields=())
  assert sorted(selected) == ["outputs"] and sorted(selected["outputs"]) == ["direction"]
  applied = trained.apply({"features": full["features"][:5]})
  np.testing.assert_allclose(applied["direction"], direct["direction"][:5], atol=1e-6)
  with pytest.raises(KeyError, match="unknown split 'nope'"):
    trained.predict("nope")
  with pytest.raises(KeyError, match="not model outputs"):
    trained.predict("test", outputs=("kappa",))


def test_train_and_evaluate_smoke_in_process(tmp_path, toy_smoke):
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(toy_smoke, workdir)
  assert set(result) == {"validation", "test", "analysis"}
  assert result["test"]["loss"] < -0.3  # Random guessing gives 0.
  assert result["analysis"]["num_test"] == 48
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f]
  evals = [e for e in events if e["event"] == "eval"]
  assert [e["step"] for e in evals] == [16, 32]  # 256 // 16 = 16 steps per epoch.
  assert [e["step"] for e in events if e["event"] == "train"] == list(range(5, 33, 5))
  best = min(evals, key=lambda e: e["metrics"]["loss"])
  step, _ = saved_state(workdir, "best")
  assert step == best["step"]
  assert result["validation"]["loss"] == pytest.approx(best["metrics"]["loss"], rel=1e-6)
  final = {e["split"]: e["metrics"] for e in events if e["event"] == "final"}
  assert final["test"] == pytest.approx(result["test"])
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["task"] == "toy"


def test_final_evaluation_splits_limit_the_closing_evaluation(tmp_path, toy_smoke):
  """A task that names its final evaluation splits gets only those in final_metrics;
  its analysis still predicts the other splits; an unknown name is a clear error."""

  class ValidationOnly(toy.ToyRegressionTask):
    final_evaluation_splits = ("validation",)

  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(toy_smoke, workdir, task=ValidationOnly(toy_smoke))
  assert set(result) == {"validation", "analysis"}
  assert result["analysis"]["num_test"] == 48
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    finals = [json.loads(line) for line in f if '"final"' in line]
  assert [e["split"] for e in finals] == ["validation"]

  class Unknown(toy.ToyRegressionTask):
    final_evaluation_splits = ("validation", "tset")

  with pytest.raises(ValueError, match="tset"):
    train.train_and_evaluate(toy_smoke, str(tmp_path / "run2"), task=Unknown(toy_smoke))


# ----------------------------------------------------------------------------- contract


def test_constant_collections_are_neither_trained_nor_averaged(tmp_path, toy_smoke):
  """A complex constant collection (made at init) survives training bit for bit, apart
  from the mutable batch_stats; the complex parameter trains and the loss falls."""
  toy_smoke.model.complex_features = True
  toy_smoke.model.dropout_rate = 0.0
  task, mesh, model, state, batch = _setup(toy_smoke, 16)
  assert set(state.model_state) == {"batch_stats"} and set(state.constants) == {"constants"}
  projection = np.asarray(state.constants["constants"]["ComplexFeatures_0"]["projection"])
  assert projection.dtype == np.complex64
  result = train.train_and_evaluate(toy_smoke, str(tmp_path / "run"), task=task, mesh=mesh)
  step, saved = saved_state(str(tmp_path / "run"), "checkpoints")
  np.testing.assert_array_equal(saved["constants"]["constants"]["ComplexFeatures_0"]
                                ["projection"], projection)
  w = saved["params"]["ComplexFeatures_0"]["w"]
  assert w.dtype == np.complex64
  assert not np.allclose(w, np.asarray(state.params["ComplexFeatures_0"]["w"]))
  assert result["test"]["loss"] < -0.2  # Random guessing gives 0.


class _ComplexTarget(nn.Module):
  """One complex parameter z; outputs |z − t|² per example (t = 1 + 2i)."""

  @nn.compact
  def __call__(self, batch, train: bool):
    z = self.param("z", lambda key: jnp.asarray(0.5 - 0.5j, jnp.complex64))
    return {"d2": jnp.abs(z - (1 + 2j)) ** 2 * jnp.ones_like(batch["mask"])}


class _ComplexTask(toy.ToyRegressionTask):
  def build_model(self):
    return _ComplexTarget()

  def loss_terms(self, outputs, batch):
    return {"loss": (jnp.sum(outputs["d2"] * batch["mask"]), jnp.sum(batch["mask"]))}


def test_complex_parameter_update_is_steepest_descent(toy_smoke):
  """For a real loss L(z) = |z − t|², jax.grad returns 2·conj(z − t); optax expects
  ∂L/∂z* = 2(z − t) (its conjugate), so that SGD's z − lr·g moves z straight to t."""
  task = _ComplexTask(toy_smoke)
  mesh = parallel.make_mesh(jax.devices()[:1])
  batch = {"features": np.zeros((4, 16), np.float32), "mask": np.ones((4,), np.float32)}
  lr = 0.1
  state = train.create_train_state(task.build_model(), optax.sgd(lr), batch, 0, mesh)
  z0 = complex(np.asarray(state.params["z"]))
  step = train.make_train_step(task.build_model(), task, mesh, optax.constant_schedule(lr))
  new_state, metrics = step(state, parallel.shard_batch(batch, mesh))
  z1 = complex(np.asarray(new_state.params["z"]))
  t = 1 + 2j
  assert z1 == pytest.approx(z0 - lr * 2 * (z0 - t), abs=1e-6)
  assert abs(z1 - t) < abs(z0 - t)
  # Negative control: jax.grad's raw output used as the update moves Im(z) the wrong way.
  raw = jax.grad(lambda z: jnp.abs(z - t) ** 2)(jnp.complex64(z0))
  z_raw = z0 - lr * complex(raw)
  assert abs(z_raw.imag - t.imag) > abs(z0.imag - t.imag)
  assert float(metrics["loss"]) == pytest.approx(abs(z0 - t) ** 2, rel=1e-5)
