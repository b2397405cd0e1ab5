"""Training strategies (``jax.pmap`` vs ``shard_map``) and exact gradient accumulation.

The 8-device checks run in one subprocess with ``--xla_force_host_platform_device_count=8``
(started first, so that the in-process one-device references are computed meanwhile).
Tolerances: float32 updates that differ only by the order of the sums (over devices,
micro-batches) agree to ~1e-6 relative per step; after 10-30 Adam steps rtol 2e-4 /
atol 2e-5 (as in test_parallel.py) leaves a wide margin.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import REPO_ROOT, load_config, saved_state, subprocess_env
from recoil_jax import config_lib
from recoil_jax import parallel
from recoil_jax import train
from recoil_jax.data import pipeline
from recoil_jax.studies.toy import task as toy

CRASH_STEP = 13  # The interrupted pmap run dies reading this batch (after the step-10 checkpoint).


class BatchNormMLP(nn.Module):
  """The toy MLP with BatchNorm whose statistics are cross-replica over ``axis_name``."""
  axis_name: str | None = None

  @nn.compact
  def __call__(self, batch, train: bool):
    h = nn.Dense(32)(batch["features"])
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(h)
    v = nn.Dense(3)(nn.relu(h))
    return {"direction": v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)}


class CrossReplicaTask(toy.ToyRegressionTask):
  """The toy task with BatchNorm over ``parallel.DATA_AXIS`` (or per device: ``axis_name=None``)."""

  def __init__(self, config, axis_name: str | None = parallel.DATA_AXIS):
    super().__init__(config)
    self.axis_name = axis_name

  def build_model(self):
    return BatchNormMLP(axis_name=self.axis_name)


class _Crash(Exception):
  pass


class _CrashingSource:
  """The training source; reading any example of batch ``crash_step`` raises ``_Crash``.

  Examples read to initialise the model (indices ``< skip``) never raise; the others of
  that batch are read for the first time at ``crash_step`` (it lies in the first epoch).
  """

  def __init__(self, source, config, crash_step: int, skip: int):
    self.source = source
    ids = pipeline.train_batches(
        _IdSource(len(source)), global_batch_size=config.train.global_batch_size,
        seed=config.seed, process_index=0, process_count=1,
        num_epochs=config.train.num_epochs)[crash_step]["id"]
    self.crash_ids = {int(i) for i in ids if i >= skip}
    assert self.crash_ids

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    if int(i) in self.crash_ids:
      raise _Crash(f"simulated crash reading example {i}")
    return self.source[i]


class _IdSource:

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"id": np.int32(i)}


class CrashingTask(toy.ToyRegressionTask):
  """The toy task whose run dies (``_Crash``) when it reads the batch of ``CRASH_STEP``."""

  def __init__(self, config, skip: int):
    super().__init__(config)
    self.crashing = _CrashingSource(super().train_source(), config, CRASH_STEP, skip)

  def train_source(self):
    return self.crashing


def deterministic_smoke(num_epochs: int = 2) -> ml_collections.ConfigDict:
  """Toy smoke config without dropout or BatchNorm (device-count independent)."""
  config = load_config("configs/toy.py", "smoke")
  config.model.dropout_rate = 0.0
  config.model.batch_norm = False
  config.train.num_epochs = num_epochs
  config.train.max_checkpoints_to_keep = 10  # Keep step 10 for the comparison.
  return config


def train_steps(task, devices, *, strategy: str, grad_accum_steps: int = 1,
                num_steps: int = 2, learning_rate: float = 0.1, pad_from: int | None = None):
  """SGD steps on the first ``num_steps`` batches of 16 training examples.

  Returns:
    ``(variables, metrics)``: ``{"params", **model_state}`` as numpy after the steps, and
    the host metrics of every step.
  """
  mesh = parallel.make_mesh(devices)
  model = task.build_model()
  src = task.train_source()
  batches = []
  for s in range(num_steps):
    idx = list(range(16 * s, 16 * (s + 1)))
    batch = pipeline.stack_examples([src[i] for i in idx], name="train", indices=idx)
    batch["mask"] = np.ones((16,), np.float32)
    if pad_from is not None:
      batch["mask"][pad_from:] = 0.0
    batches.append(batch)
  state = train.create_train_state(model, optax.sgd(learning_rate), batches[0], 0, mesh)
  strat = train.make_strategy(strategy, model, task, mesh,
                              optax.constant_schedule(learning_rate),
                              grad_accum_steps=grad_accum_steps)
  loop_state = strat.to_loop_state(state)
  metrics = []
  for batch in batches:
    loop_state, m = strat.train_step(loop_state, strat.place_batch(batch))
    metrics.append(strat.host_metrics(m))
  final = strat.to_canonical(loop_state)
  return jax.tree.map(np.asarray, {"params": final.params, **final.model_state}), metrics


def assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def max_difference(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- 8 devices

EIGHT_DEVICES = r"""
import json, os, pickle, sys
import jax
from conftest import load_config
from recoil_jax import parallel, train
from recoil_jax.studies.toy import task as toy
import test_train_strategies as t

assert jax.device_count() == 8, jax.devices()
out_dir = sys.argv[1]
results = {}

# An interrupted pmap run (dies at CRASH_STEP; checkpoint 10 written), resumed under shard_map.
config = t.deterministic_smoke()
config.train.strategy = "pmap"
config.train.data_threads = 0  # Synchronous reads: the crash surfaces at its own step.
workdir = os.path.join(out_dir, "run")
try:
  train.train_and_evaluate(config, workdir, task=t.CrashingTask(config, skip=2))
  raise AssertionError("the pmap run did not crash")
except t._Crash:
  pass
results["steps_after_crash"] = sorted(
    int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
config = t.deterministic_smoke()
config.train.strategy = "shard_map"
results["resumed"] = train.train_and_evaluate(config, workdir)

# Step-level checks (2 SGD steps on fixed batches).
trees = {}
devices = jax.devices()
smoke = load_config("configs/toy.py", "smoke")  # BatchNorm (per device) + dropout.
for strategy in ("pmap", "shard_map"):
  trees["toy_bn_dropout_" + strategy] = t.train_steps(toy.ToyRegressionTask(smoke), devices,
                                                      strategy=strategy)
  trees["cross_replica_" + strategy] = t.train_steps(t.CrossReplicaTask(smoke), devices,
                                                     strategy=strategy)
trees["per_device_bn"] = t.train_steps(t.CrossReplicaTask(smoke, axis_name=None), devices,
                                       strategy="pmap")
det = t.deterministic_smoke()
trees["accum2_pmap"] = t.train_steps(toy.ToyRegressionTask(det), devices, strategy="pmap",
                                     grad_accum_steps=2, pad_from=11)
with open(os.path.join(out_dir, "trees.pkl"), "wb") as f:
  pickle.dump(trees, f)
print("RESULT" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
  """Starts the 8-device subprocess; calling the value waits: (out_dir, results, trees)."""
  out_dir = str(tmp_path_factory.mktemp("eight"))
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
                       PYTHONPATH=os.path.join(REPO_ROOT, "tests") + os.pathsep + REPO_ROOT)
  proc = subprocess.Popen([sys.executable, "-c", EIGHT_DEVICES, out_dir], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  @functools.cache
  def wait():
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-4000:]
    with open(os.path.join(out_dir, "trees.pkl"), "rb") as f:
      trees = pickle.load(f)
    return out_dir, json.loads(stdout.split("RESULT", 1)[1]), trees

  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def test_pmap_checkpoint_matches_one_device_and_resumes_under_shard_map(eight_devices, tmp_path):
  config = deterministic_smoke()
  ref_dir = str(tmp_path / "one_device")
  ref = train.train_and_evaluate(config, ref_dir, mesh=parallel.make_mesh(jax.devices()[:1]))
  out_dir, results, _ = eight_devices()
  run_dir = os.path.join(out_dir, "run")
  assert results["steps_after_crash"] == [10]  # Died at step 13, before the step-20 save.
  # The pmap-written checkpoint (8 devices) has the shard_map layout and the 1-device values.
  assert_trees_close(_state_at(run_dir, 10), _state_at(ref_dir, 10))
  # Resumed under shard_map from it: same final weights and metrics as the 1-device run.
  step, final = saved_state(run_dir, "checkpoints")
  ref_step, ref_final = saved_state(ref_dir, "checkpoints")
  assert step == ref_step == 32
  assert_trees_close(final, ref_final)
  for split in ("validation", "test"):
    for k, v in ref[split].items():
      assert results["resumed"][split][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (split, k)
  with open(os.path.join(run_dir, "final_metrics.json")) as f:
    assert json.load(f)["stop_reason"] == "completed 2 epochs"


def _state_at(workdir, step):
  """The TrainState tree (numpy) of checkpoint ``step`` in ``workdir/checkpoints``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def test_pmap_matches_shard_map_and_cross_replica_batch_norm_matches_one_device(eight_devices):
  smoke = load_config("configs/toy.py", "smoke")
  one = jax.devices()[:1]
  ref_cross, ref_cross_metrics = train_steps(CrossReplicaTask(smoke), one, strategy="shard_map")
  det = deterministic_smoke()
  ref_det, _ = train_steps(toy.ToyRegressionTask(det), one, strategy="shard_map", pad_from=11)
  _, _, trees = eight_devices()
  # Same per-device function, batch split and dropout streams: pmap == shard_map, even with
  # per-device BatchNorm and dropout.
  assert_trees_close(trees["toy_bn_dropout_pmap"][0], trees["toy_bn_dropout_shard_map"][0],
                     rtol=1e-5, atol=1e-6)
  # Cross-replica BatchNorm: 8 devices x 2 examples normalise with the statistics of all 16,
  # i.e. exactly the 1-device computation, under both strategies.
  for strategy in ("pmap", "shard_map"):
    variables, metrics = trees["cross_replica_" + strategy]
    assert_trees_close(variables, ref_cross, rtol=1e-5, atol=1e-6)
    assert metrics[-1]["loss"] == pytest.approx(ref_cross_metrics[-1]["loss"], rel=1e-5)
  # Negative control: per-device statistics of 2 examples differ from those of 16.
  assert max_difference(trees["per_device_bn"][0]["params"], ref_cross["params"]) > 1e-3
  # 8 devices x 2 micro-batches of 1 example (5 of 16 padded) == 1 device, full batch.
  assert_trees_close(trees["accum2_pmap"][0], ref_det, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- one device


def test_grad_accumulation_matches_the_full_batch_under_padding():
  task = toy.ToyRegressionTask(deterministic_smoke())
  one = jax.devices()[:1]
  full, full_metrics = train_steps(task, one, strategy="shard_map", pad_from=5)
  for strategy in ("shard_map", "pmap"):
    accum, accum_metrics = train_steps(task, one, strategy=strategy, grad_accum_steps=4,
                                       pad_from=5)  # Micro-batch counts 4, 1, 0, 0.
    assert_trees_close(accum, full, rtol=1e-5, atol=1e-6)
    for a, f in zip(accum_metrics, full_metrics):
      assert set(a) == set(f)
      for k in f:
        assert a[k] == pytest.approx(f[k], rel=1e-5, abs=1e-7), (strategy, k)


def _toy_model_and_first_batch(**model_overrides):
  """(task, model, batch): the toy smoke task (``config.model`` overrides applied), its model
  and its first 16 training examples, unpadded."""
  smoke = load_config("configs/toy.py", "smoke")
  smoke.model.update(model_overrides)
  task = toy.ToyRegressionTask(smoke)
  src = task.train_source()
  batch = pipeline.stack_examples([src[i] for i in range(16)], name="train",
                                  indices=list(range(16)))
  batch["mask"] = np.ones((16,), np.float32)
  return task, task.build_model(), batch


def test_micro_batches_are_unrolled_on_the_cpu():
  """On the CPU the micro-batch loop is unrolled (XLA:CPU runs convolutions inside a while loop
  on a much slower path): the accumulating step has no more while loops than the plain one
  (the toy model has its own)."""
  assert jax.default_backend() == "cpu"
  task, model, batch = _toy_model_and_first_batch()
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train.create_train_state(model, optax.sgd(0.1), batch, 0, mesh)

  def while_loops(grad_accum_steps):
    strat = train.make_strategy("shard_map", model, task, mesh, optax.constant_schedule(0.1),
                                grad_accum_steps=grad_accum_steps)
    hlo = strat.train_step.lower(strat.to_loop_state(state), strat.place_batch(batch)).as_text()
    return hlo.count("stablehlo.while")

  assert while_loops(2) == while_loops(1)


def test_grad_accumulation_threads_batch_stats_like_a_sequential_loop():
  """BatchNorm under accumulation equals the obvious loop over micro-batches."""
  task, model, batch = _toy_model_and_first_batch(dropout_rate=0.0)  # BatchNorm on.
  state = train.create_train_state(model, optax.sgd(1.0), batch, 0,
                                   parallel.make_mesh(jax.devices()[:1]))
  params = jax.tree.map(np.asarray, state.params)
  stats = jax.tree.map(np.asarray, state.model_state["batch_stats"])

  @jax.jit
  def grad_of_sum(p, stats, micro):
    def loss_sum(p):
      out, new = model.apply({"params": p, "batch_stats": stats}, micro, train=True,
                             mutable=["batch_stats"])
      cos = jnp.sum(out["direction"] * micro["direction"], -1)
      return jnp.sum(-cos * micro["mask"]), new["batch_stats"]
    return jax.grad(loss_sum, has_aux=True)(p)

  grad_sum = jax.tree.map(np.zeros_like, params)
  for j in range(4):
    micro = {k: v[4 * j:4 * (j + 1)] for k, v in batch.items()}
    g, stats = grad_of_sum(params, stats, micro)
    grad_sum = jax.tree.map(lambda a, b: a + np.asarray(b), grad_sum, g)
  expected = {"params": jax.tree.map(lambda p, g: p - g / 16.0, params, grad_sum),
              "batch_stats": jax.tree.map(np.asarray, stats)}
  for strategy in ("shard_map", "pmap"):
    got, _ = train_steps(task, jax.devices()[:1], strategy=strategy, grad_accum_steps=4,
                         num_steps=1, learning_rate=1.0)
    assert_trees_close(got, expected, rtol=1e-5, atol=1e-6)
  # Negative control: one BatchNorm over the full batch has other statistics.
  full, _ = train_steps(task, jax.devices()[:1], strategy="shard_map", num_steps=1,
                        learning_rate=1.0)
  assert max_difference(full["batch_stats"], expected["batch_stats"]) > 1e-4


# ----------------------------------------------------------------------------- errors


def test_config_errors_name_the_keys(toy_smoke, tmp_path):
  assert toy_smoke.train.strategy == "shard_map" and toy_smoke.train.grad_accum_steps == 1
  tc = toy_smoke.train
  config_lib.validate_train(tc, 8)  # 16 = 8 devices x 1 x 2.
  tc.grad_accum_steps = 2
  config_lib.validate_train(tc, 8)
  tc.grad_accum_steps = 4
  with pytest.raises(ValueError, match=r"config\.train\.global_batch_size=16 .* devices \(8\) x "
                                       r"config\.train\.grad_accum_steps \(4\) = 32"):
    config_lib.validate_train(tc, 8)
  tc.grad_accum_steps = 0
  with pytest.raises(ValueError, match=r"config\.train\.grad_accum_steps=0 must be an integer"):
    config_lib.validate_train(tc, 1)
  tc.grad_accum_steps = 1
  tc.eval_batch_size = 12
  with pytest.raises(ValueError, match=r"config\.train\.eval_batch_size=12 .* devices \(8\)"):
    config_lib.validate_train(tc, 8)
  tc.eval_batch_size = 16
  tc.strategy = "pjit"
  with pytest.raises(ValueError, match=r"config\.train\.strategy='pjit' is not one of "
                                       r"\('shard_map', 'pmap'\)"):
    config_lib.validate_train(tc, 1)
  # The trainer checks before it writes anything into the workdir.
  workdir = str(tmp_path / "bad")
  with pytest.raises(ValueError, match=r"config\.train\.strategy='pjit'"):
    train.train_and_evaluate(toy_smoke, workdir)
  tc.strategy = "pmap"
  tc.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r"config\.train\.global_batch_size=16 .* devices \(1\) x "
                                       r"config\.train\.grad_accum_steps \(3\) = 3"):
    train.train_and_evaluate(toy_smoke, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match=r"config\.train\.strategy='pjit'"):
    train.make_strategy("pjit", None, None, parallel.make_mesh(jax.devices()[:1]),
                        optax.constant_schedule(0.1))


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_pmap_with_accumulation_match_one_device(tmp_path):
  """2 processes x 2 devices, pmap, 2 micro-batches == 1 device, full batch (~40 s)."""
  config = deterministic_smoke(num_epochs=1)
  ref = train.train_and_evaluate(config, str(tmp_path / "one"),
                                 mesh=parallel.make_mesh(jax.devices()[:1]))
  workdir = str(tmp_path / "multi")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  flags = ["--config.model.dropout_rate=0", "--config.model.batch_norm=False",
           "--config.train.num_epochs=1", "--config.train.max_checkpoints_to_keep=10",
           "--config.train.strategy=pmap", "--config.train.grad_accum_steps=2",
           f"--config.parallel.coordinator_address=127.0.0.1:{port}",
           "--config.parallel.num_processes=2"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "recoil_jax.main", "--config=configs/toy.py:smoke",
       f"--workdir={workdir}", *flags, f"--config.parallel.process_id={i}"],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "4 devices, 2 processes, strategy pmap, 2 micro-batches" in outputs[0][0]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    multi = json.load(f)["metrics"]
  for split in ("validation", "test"):
    for k, v in ref[split].items():
      assert multi[split][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (split, k)
  for step in (10, 16):
    assert_trees_close(_state_at(workdir, step), _state_at(str(tmp_path / "one"), step))
