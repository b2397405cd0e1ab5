"""The one training and evaluation loop shared by every study.

``train_and_evaluate(config, workdir)`` builds the task named by ``config.task``, trains
it data-parallel with early stopping on the ``validation`` split, keeps the best weights,
evaluates every split with them and runs the task's analysis.

Parallelism. A ``('data',)`` mesh over all devices of all processes; the batch is split
over ``'data'``. ``config.train.strategy`` picks how a training step runs:

* ``"shard_map"`` (default): one ``jax.jit`` over the mesh (state replicated and donated,
  batch sharded on ``'data'``) that runs the model per device with ``jax.shard_map``.
* ``"pmap"``: ``jax.pmap`` over the mesh's devices with axis name ``'data'``; the state
  carries a leading device axis (``parallel.pmap_replicate``) and this process's batch
  is reshaped ``[local_devices, per_device, ...]``. On several processes every process
  maps over its local devices and the collectives span all of them.

Both run the same per-device function (``_device_gradients``), so they compute the same
update. Each device differentiates the *sum* of its loss terms; the gradients and the
``{name: (sum, count)}`` terms are ``psum``-reduced over ``'data'`` and ``grads =
psum(grad sum) / psum(count)``: the exact gradient of the global masked mean (equal to
``pmean`` of per-device mean-loss gradients when devices hold equal counts, and still
exact when padding makes them unequal). ``config.train.grad_accum_steps = k`` splits each
device's batch into ``k`` contiguous micro-batches run in a ``lax.scan``, accumulating
gradients and (sum, count) terms and threading mutable collections through them; the
update equals the full batch's up to float reassociation (not with BatchNorm in training
mode, whose statistics are then those of a micro-batch). ``global_batch_size`` must be a
multiple of ``devices * k`` (``config_lib.validate_train``).

Mutable collections (``batch_stats``) are averaged over devices after the step with
``pmean`` (integer leaves: ``pmax``). A BatchNorm without ``axis_name`` uses per-device
(per micro-batch) statistics, so its results depend on the per-device batch size; with
``axis_name=parallel.DATA_AXIS`` it uses cross-replica statistics of the whole global
(micro-)batch under either strategy, and on any device count. The dropout RNG is
``fold_in(fold_in(state.rng, step), device_index)`` (``device_index`` is global over
processes), folded once more with the micro-batch index when ``k > 1``; models get it as
the ``'dropout'`` stream.

Checkpoints, resume, ``evaluate`` and ``predict`` use the canonical state: a TrainState
replicated over the mesh (``pmap`` state is unreplicated for them at every checkpoint),
so a checkpoint has the same layout whichever strategy wrote it and resumes under either.
Evaluation and prediction always run as a jitted ``shard_map`` over the mesh on that
state: they need no gradients, the canonical state exists at every evaluation point
anyway, and one code path gives the same metrics whichever strategy trained.

Health checks. Step ``s``'s scalars are fetched while step ``s + 1`` runs (one step of
lag, no stall of the device). If the loss or gradient norm of step ``s`` is not finite,
or any ``error/*`` metric is > 0, a ``FloatingPointError`` / ``RuntimeError`` names the
key and step ``s`` (the 0-based global step: the batch ``train_batches(...)[s]``). Error
metrics come from ``loss_terms`` keys and from model output keys starting with
``error/`` (summed over the batch and devices).

Workdir. ``config.json``, ``metrics.jsonl`` (one JSON line per event: ``event``
("train" | "eval" | "final"), ``step`` (completed steps), ``epoch``, ``split``,
``metrics``, ``time`` (Unix seconds)), TensorBoard events in ``tensorboard/``,
checkpoints in ``checkpoints/`` (step cadence and every epoch end) and the best
validation weights in ``best/``, ``final_metrics.json``. Re-running resumes from the
latest checkpoint with the data position restored exactly; a finished run is not
trained again (final evaluation and analysis run again).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from recoil_jax import checkpointing
from recoil_jax import config_lib
from recoil_jax import parallel
from recoil_jax import tasks
from recoil_jax.data import pipeline
from recoil_jax.tasks import Task

ERROR_PREFIX = "error/"
VALIDATION = "validation"


class TrainState(train_state.TrainState):
  """Flax TrainState plus mutable model collections and the base RNG key.

  Attributes:
    model_state: mutable variable collections other than ``params`` (e.g.
      ``{"batch_stats": ...}``); empty dict if the model has none.
    rng: base PRNG key (uint32[2]) folded with step and device index every step.
  """
  model_state: Any
  rng: jax.Array


@dataclasses.dataclass
class Bookkeeping:
  """Trainer state outside the TrainState, checkpointed as JSON."""
  step: int = 0  # Completed training steps.
  epoch: int = 0  # Completed epochs.
  best_validation_loss: float = math.inf
  best_step: int = -1
  epochs_without_improvement: int = 0
  finished: bool = False
  stop_reason: str = ""

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["best_validation_loss"] = (None if math.isinf(self.best_validation_loss)
                                 else self.best_validation_loss)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Bookkeeping":
    d = dict(d)
    if d.get("best_validation_loss") is None:
      d["best_validation_loss"] = math.inf
    return cls(**d)


# ----------------------------------------------------------------------------- steps


def _variables(params, model_state) -> dict[str, Any]:
  return {"params": params, **model_state}


def _local_terms(terms: Mapping[str, tuple[jax.Array, jax.Array]], outputs: Mapping[str, Any]
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """This device's ``(sums, counts, totals)``: loss terms and ``error/*`` model outputs.

  ``sums`` / ``counts`` hold every ``task.loss_terms`` entry, ``totals`` the sums of the
  model outputs named ``error/*`` that are not loss terms (counters, reported as totals).
  All float32 scalars; nothing is reduced over devices yet.
  """
  if "loss" not in terms:
    raise KeyError(f"task.loss_terms must return a 'loss' term; got {sorted(terms)}")
  sums = {k: jnp.asarray(s, jnp.float32) for k, (s, _) in terms.items()}
  counts = {k: jnp.asarray(c, jnp.float32) for k, (_, c) in terms.items()}
  totals = {k: jnp.sum(v).astype(jnp.float32) for k, v in outputs.items()
            if k.startswith(ERROR_PREFIX) and k not in sums}
  return sums, counts, totals


def _global_terms(sums, counts, totals) -> dict[str, tuple[jax.Array, jax.Array]]:
  """``{name: (sum, count)}`` summed over ``'data'`` (all devices of all processes)."""
  psum = lambda x: jax.lax.psum(x, parallel.DATA_AXIS)  # noqa: E731
  out = {k: (psum(sums[k]), psum(counts[k])) for k in sums}
  out.update({k: (psum(v), jnp.float32(1.0)) for k, v in totals.items()})  # Totals, not means.
  return out


def _average_model_state(model_state):
  def avg(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jax.lax.pmean(x, parallel.DATA_AXIS)
    return jax.lax.pmax(x, parallel.DATA_AXIS)
  return jax.tree.map(avg, model_state)


def _varying(tree):
  """Marks every leaf as varying over ``'data'`` (shard_map's type system).

  Under ``shard_map`` replicated inputs are typed invariant, and ``lax.scan`` wants the
  carry's types to match exactly; we differentiate per device and ``psum`` explicitly,
  so parameters and carries are made varying. A no-op under ``pmap`` (no such types).
  ``jax.typeof(x).mat`` is jax 0.10's manual-axis type (pyproject pins jax < 0.11).
  """
  def cast(x):
    if parallel.DATA_AXIS in jax.typeof(x).mat.varying:
      return x
    return jax.lax.pcast(x, parallel.DATA_AXIS, to="varying")
  return jax.tree.map(cast, tree)


def _device_gradients(model: nn.Module, task: Task, params, model_state, rng, step, batch, *,
                      grad_accum_steps: int):
  """One device's part of a training step, under ``shard_map`` or ``pmap`` (axis ``'data'``).

  The device batch ``[b, ...]`` is split into ``grad_accum_steps`` contiguous
  micro-batches ``[b / k, ...]`` run one after another (``lax.scan``); mutable
  collections thread through them. Gradients of the summed loss and the (sum, count)
  terms are accumulated, then summed over devices, so ``grads = psum(d sum / d params) /
  psum(count)`` is the gradient of the global masked mean whatever ``k`` and the device
  count (up to float reassociation; BatchNorm statistics are those of each micro-batch).

  Returns:
    ``(grads, model_state, metrics)``, all the same on every device: global gradients,
    mutable collections averaged over devices (``pmean``; integer leaves ``pmax``),
    ``{term: global sum / count}`` plus ``error/*`` totals.
  """
  k = grad_accum_steps
  rng = jax.random.fold_in(jax.random.fold_in(rng, step),
                           jax.lax.axis_index(parallel.DATA_AXIS))
  mutable = list(model_state.keys())
  params, model_state = _varying(params), _varying(model_state)

  def micro_step(model_state, micro_batch, micro_rng):
    def loss_fn(params):
      variables = _variables(params, model_state)
      if mutable:
        outputs, new_state = model.apply(variables, micro_batch, train=True,
                                         rngs={"dropout": micro_rng}, mutable=mutable)
      else:
        outputs = model.apply(variables, micro_batch, train=True, rngs={"dropout": micro_rng})
        new_state = {}
      sums, counts, totals = _local_terms(task.loss_terms(outputs, micro_batch), outputs)
      return sums["loss"], (sums, counts, totals, dict(new_state))

    (_, (sums, counts, totals, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return new_state, (grads, sums, counts, totals)

  if k == 1:
    model_state, acc = micro_step(model_state, batch, rng)
  else:
    def split(x):
      if x.ndim == 0 or x.shape[0] % k:
        raise ValueError(f"a device batch of shape {x.shape} cannot be split into "
                         f"config.train.grad_accum_steps={k} equal micro-batches")
      return x.reshape((k, x.shape[0] // k) + x.shape[1:])

    micro_batches = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(lambda: micro_step(model_state, first, rng)[1])
    zeros = _varying(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

    def body(carry, xs):
      model_state, acc = carry
      micro_batch, index = xs
      new_state, terms = micro_step(model_state, micro_batch, jax.random.fold_in(rng, index))
      return _varying((new_state, jax.tree.map(jnp.add, acc, terms))), None

    (model_state, acc), _ = jax.lax.scan(body, (model_state, zeros),
                                         (micro_batches, jnp.arange(k)))
  grads, sums, counts, totals = acc
  terms = _global_terms(sums, counts, totals)
  count = terms["loss"][1]
  grads = jax.tree.map(lambda g: jax.lax.psum(g, parallel.DATA_AXIS) / count, grads)
  metrics = {name: s / c for name, (s, c) in terms.items()}
  return grads, _average_model_state(model_state), metrics


def _apply_update(state: TrainState, grads, model_state, metrics, schedule):
  metrics = dict(metrics)
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  return state.apply_gradients(grads=grads, model_state=model_state), metrics


def make_train_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh,
                    schedule: Callable[[Any], Any], *, grad_accum_steps: int = 1):
  """The ``shard_map`` strategy's jitted ``train_step(state, batch) -> (state, metrics)``.

  ``state`` is replicated over ``mesh`` (donated); ``batch`` is a global batch sharded on
  ``'data'`` (``parallel.shard_batch``); ``metrics`` are replicated scalars: every loss
  term (global mean), ``error/*`` totals, ``grad_norm`` and ``learning_rate``.
  ``grad_accum_steps`` splits each device's batch into that many micro-batches.
  """

  def per_device(params, model_state, rng, step, batch):
    return _device_gradients(model, task, params, model_state, rng, step, batch,
                             grad_accum_steps=grad_accum_steps)

  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P(), P(), P(), P(parallel.DATA_AXIS)),
                          out_specs=(P(), P(), P()))

  def train_step(state: TrainState, batch):
    grads, new_model_state, metrics = sharded(state.params, state.model_state, state.rng,
                                              state.step, batch)
    return _apply_update(state, grads, new_model_state, metrics, schedule)

  rep = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, parallel.data_sharded(mesh)),
                 out_shardings=rep, donate_argnums=0)


def make_pmap_train_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh,
                         schedule: Callable[[Any], Any], *, grad_accum_steps: int = 1):
  """The ``pmap`` strategy's ``train_step(state, batch) -> (state, metrics)``.

  ``jax.pmap`` over the devices of ``mesh`` with axis name ``'data'``. ``state`` is in the
  pmap layout (``parallel.pmap_replicate``: a leading device axis; donated); ``batch`` is
  this process's batch reshaped ``[local_devices, per_device, ...]``
  (``parallel.pmap_split_batch``). Each device computes the same global update as
  ``make_train_step`` (gradients summed over all devices of all processes and divided by
  the global count: the ``pmean`` of per-device gradients, exact under padding), so the
  replicas stay equal. ``metrics`` have a leading axis of local devices (all equal).
  """

  def per_device(state: TrainState, batch):
    grads, new_model_state, metrics = _device_gradients(
        model, task, state.params, state.model_state, state.rng, state.step, batch,
        grad_accum_steps=grad_accum_steps)
    return _apply_update(state, grads, new_model_state, metrics, schedule)

  return jax.pmap(per_device, axis_name=parallel.DATA_AXIS,
                  devices=parallel.pmap_devices(mesh), donate_argnums=0)


def make_eval_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh):
  """The jitted ``eval_step(state, batch) -> {name: (sum, count)}`` (global, replicated)."""

  def per_device(params, model_state, batch):
    outputs = model.apply(_variables(params, model_state), batch, train=False)
    return _global_terms(*_local_terms(task.loss_terms(outputs, batch), outputs))

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(parallel.DATA_AXIS)),
                          out_specs=P())

  def eval_step(state: TrainState, batch):
    return sharded(state.params, state.model_state, batch)

  rep = parallel.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(rep, parallel.data_sharded(mesh)), out_shardings=rep)


def make_predict_step(model: nn.Module, mesh: jax.sharding.Mesh):
  """The jitted ``predict_step(state, batch) -> outputs`` (sharded on ``'data'``)."""

  def per_device(params, model_state, batch):
    return model.apply(_variables(params, model_state), batch, train=False)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(parallel.DATA_AXIS)),
                          out_specs=P(parallel.DATA_AXIS))
  return jax.jit(lambda state, batch: sharded(state.params, state.model_state, batch),
                 in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=parallel.data_sharded(mesh))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       example_batch: Mapping[str, np.ndarray], seed: int,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """Initialises the model on ``example_batch`` (host arrays) and replicates the state."""
  rng = jax.random.PRNGKey(seed)
  batch = parallel.replicate(dict(example_batch), mesh)

  def init(rng, batch):
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, batch, train=False)
    variables = dict(variables)
    params = variables.pop("params")
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                              model_state=variables, rng=state_rng)
    # A strongly typed step, as restored from checkpoints (avoids recompilation).
    return state.replace(step=jnp.zeros((), jnp.int32))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng, batch)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How the training loop runs one data-parallel strategy (``config.train.strategy``).

  The *canonical* state is a TrainState replicated over the mesh; checkpoints, resume,
  ``evaluate`` and ``predict`` use it whichever strategy trains. The loop keeps the
  state in the strategy's own layout between checkpoints.

  Attributes:
    name: one of ``config_lib.STRATEGIES``.
    train_step: ``(loop_state, device_batch) -> (loop_state, device_metrics)``; the loop
      state is donated.
    place_batch: this process's host batch ``[local_batch, ...]`` -> ``device_batch``.
    to_loop_state: canonical state -> loop layout (the input is not donated).
    to_canonical: loop layout -> canonical state (the input stays valid).
    host_metrics: ``device_metrics`` -> ``{name: float}`` (the same on every process).
  """
  name: str
  train_step: Callable[[Any, Any], tuple[Any, Any]]
  place_batch: Callable[[Any], Any]
  to_loop_state: Callable[[TrainState], Any]
  to_canonical: Callable[[Any], TrainState]
  host_metrics: Callable[[Any], dict[str, float]]


def make_strategy(name: str, model: nn.Module, task: Task, mesh: jax.sharding.Mesh,
                  schedule: Callable[[Any], Any], *, grad_accum_steps: int = 1) -> Strategy:
  """The :class:`Strategy` called ``name`` ("shard_map" or "pmap") on ``mesh``."""
  if name == "shard_map":
    return Strategy(
        name=name,
        train_step=make_train_step(model, task, mesh, schedule,
                                   grad_accum_steps=grad_accum_steps),
        place_batch=lambda batch: parallel.shard_batch(batch, mesh),
        to_loop_state=lambda state: state,
        to_canonical=lambda state: state,
        host_metrics=lambda m: {k: float(v) for k, v in parallel.fetch(m).items()})
  if name == "pmap":
    return Strategy(
        name=name,
        train_step=make_pmap_train_step(model, task, mesh, schedule,
                                        grad_accum_steps=grad_accum_steps),
        place_batch=lambda batch: parallel.pmap_split_batch(batch, mesh),
        to_loop_state=lambda state: parallel.pmap_replicate(state, mesh),
        to_canonical=lambda state: parallel.pmap_unreplicate(state, mesh),
        # pmap outputs are process-local; every local device holds the same value.
        host_metrics=lambda m: {k: float(np.asarray(v)[0]) for k, v in m.items()})
  raise ValueError(
      f"config.train.strategy={name!r} is not one of {config_lib.STRATEGIES}")


# ----------------------------------------------------------------------------- helpers


def _check_health(metrics: Mapping[str, float], where: str) -> None:
  """Raises if a loss is not finite or an ``error/*`` counter is > 0."""
  for key in ("loss", "grad_norm"):
    if key in metrics and not np.isfinite(metrics[key]):
      raise FloatingPointError(f"Non-finite {key} ({metrics[key]}) {where}.")
  for key, value in metrics.items():
    if key.startswith(ERROR_PREFIX) and value > 0:
      raise RuntimeError(f"Health counter {key!r} = {value} > 0 {where}.")


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without pulling in torch.

  tensorboardX imports torch at module level when it is installed (our ``peers`` extra),
  which costs ~3 s per process; we only write scalars. If torch is not loaded yet, its
  import is blocked for the duration of this import only.
  """
  import sys  # pylint: disable=g-import-not-at-top
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # type: ignore[assignment]  # Makes `import torch` fail.
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    finally:
      del sys.modules["torch"]
  import tensorboardX  # pylint: disable=g-import-not-at-top,reimported
  return tensorboardX.SummaryWriter


class _Writer:
  """metrics.jsonl + TensorBoard, written by process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._tb = None
    if enabled:
      self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, event: str, step: int, epoch: float, split: str,
            metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"event": event, "step": int(step), "epoch": float(epoch), "split": split,
              "metrics": {k: float(v) for k, v in metrics.items()}, "time": time.time()}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    prefix = split if event != "final" else f"final_{split}"
    for k, v in metrics.items():
      self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old != new:
      flat = lambda d, p="": (  # noqa: E731
          {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{p}{k}.").items()}
          if isinstance(d, dict) else {p[:-1]: d})
      fo, fn = flat(old), flat(new)
      diff = sorted(k for k in set(fo) | set(fn) if fo.get(k) != fn.get(k))
      logging.warning("Config differs from the one in %s (keys: %s); resuming anyway.",
                      path, diff)
  _write_json(path, new)


def evaluate(eval_step, state: TrainState, source, *, name: str, global_batch_size: int,
             mesh: jax.sharding.Mesh, num_threads: int = 2, prefetch: int = 2
             ) -> dict[str, float]:
  """Exact ``{term: sum / count}`` of a whole split (padding masked, all devices/hosts)."""
  ds = pipeline.eval_batches(source, global_batch_size=global_batch_size,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), name=name)
  total = None
  for batch in pipeline.iterate(ds, 0, num_threads=num_threads, prefetch=prefetch):
    out = eval_step(state, parallel.shard_batch(batch, mesh))
    total = out if total is None else jax.tree.map(jnp.add, total, out)
  total = parallel.fetch(total)
  return {k: float(s) / float(c) if c else float("nan") for k, (s, c) in total.items()}


def make_predict_fn(predict_step, state: TrainState, sources: Mapping[str, Any], *,
                    global_batch_size: int, mesh: jax.sharding.Mesh):
  """``predict(split, fields=None) -> dict`` over a whole split, in source order.

  The returned dict is ``{"outputs": {name: np.ndarray [N, ...]}, field: np.ndarray
  [N, ...], ...}``: the model outputs (``train=False``, the given weights) and the
  example fields of the source (all of them if ``fields`` is None, else those named;
  ``mask`` excluded), concatenated over batches and processes with padding removed;
  ``N = len(source)``. Every process gets the full arrays.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def predict(split: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
    if split not in sources:
      raise KeyError(f"predict: unknown split {split!r}; splits: {sorted(sources)}")
    source = sources[split]
    ds = pipeline.eval_batches(source, global_batch_size=global_batch_size,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), name=split)
    outs, cols = [], []
    for batch in pipeline.iterate(ds, 0):
      outs.append(parallel.fetch(predict_step(state, parallel.shard_batch(batch, mesh))))
      keep = [k for k in batch if k != "mask"] if fields is None else list(fields)
      missing = [k for k in keep if k not in batch]
      if missing:
        raise KeyError(f"predict({split!r}): fields {missing} not in the examples {sorted(batch)}")
      local = {k: batch[k] for k in keep}
      if jax.process_count() > 1:
        local = jax.tree.map(np.asarray, multihost_utils.process_allgather(local, tiled=True))
      cols.append(local)
    n = len(source)
    result = {k: np.concatenate([c[k] for c in cols])[:n] for k in cols[0]}
    result["outputs"] = {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}
    return result

  return predict


# ----------------------------------------------------------------------------- main loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       task: Task | None = None,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Trains (or resumes) in ``workdir``, then evaluates the best weights on every split.

  Args:
    config: the experiment config (``config_lib.base_config`` fields plus the task's).
    workdir: output directory (created); the unit of resumption.
    task: optional task instance (default: ``tasks.get_task(config)``).
    mesh: optional ``('data',)`` mesh (default: all devices, ``parallel.make_mesh()``).

  Returns:
    ``{split: {term: value}}`` for every evaluation split with the best weights, plus
    ``"analysis"``: whatever ``task.analyse`` returned.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh() if mesh is None else mesh
  tc = config.train
  config_lib.validate_train(tc, mesh.size)  # Before the task builds its datasets.
  task = tasks.get_task(config) if task is None else task
  is_chief = jax.process_index() == 0
  process_count = jax.process_count()

  train_source = task.train_source()
  eval_sources = dict(task.eval_sources())
  batch_size = tc.global_batch_size
  steps_per_epoch = pipeline.num_steps_per_epoch(len(train_source), batch_size,
                                                 tc.steps_per_epoch)
  total_steps = steps_per_epoch * tc.num_epochs
  train_ds = pipeline.train_batches(
      train_source, global_batch_size=batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=process_count,
      num_epochs=tc.num_epochs, steps_per_epoch=steps_per_epoch)
  if VALIDATION not in eval_sources:
    logging.warning("Task has no %r split: no early stopping; the final weights are used.",
                    VALIDATION)

  model = task.build_model()
  schedule = config_lib.make_schedule(config.optimizer, total_steps)
  tx = config_lib.make_optimizer(config.optimizer, total_steps)
  per_device = batch_size // mesh.size
  example = pipeline.stack_examples([train_source[i] for i in range(per_device)],
                                    name="train", indices=list(range(per_device)))
  example["mask"] = np.ones((per_device,), np.float32)
  state = create_train_state(model, tx, example, config.seed, mesh)
  strategy = make_strategy(tc.strategy, model, task, mesh, schedule,
                           grad_accum_steps=tc.grad_accum_steps)
  eval_step = make_eval_step(model, task, mesh)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=tc.max_checkpoints_to_keep)
  best_ckpt = checkpointing.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
  book = Bookkeeping()
  latest = ckpt.latest_step()
  if latest is not None:
    state, meta = ckpt.restore(latest, state)
    book = Bookkeeping.from_json(meta)
    logging.info("Resumed from step %d (epoch %d, finished=%s) in %s", book.step, book.epoch,
                 book.finished, ckpt.directory)
  if is_chief:
    _write_config(config, workdir)
  writer = _Writer(workdir, enabled=is_chief)
  eval_kw = dict(global_batch_size=tc.eval_batch_size, mesh=mesh,
                 num_threads=tc.data_threads, prefetch=tc.prefetch_batches)

  def where(step: int) -> str:
    return (f"at training step {step} (0-based global step = index of the batch; "
            f"epoch {step // steps_per_epoch})")

  if not book.finished:
    logging.info("Training %d steps (%d epochs x %d steps, global batch %d, %d devices, "
                 "%d processes, strategy %s, %d micro-batches per device batch) from step %d.",
                 total_steps, tc.num_epochs, steps_per_epoch, batch_size, mesh.size,
                 process_count, strategy.name, tc.grad_accum_steps, book.step)
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total_steps, initial=book.step, unit="step", dynamic_ncols=True,
               disable=not (is_chief and tc.progress_bar))
    window: dict[str, list[float]] = {}
    pending = None  # (0-based step, device metrics) of the step still in flight.

    def consume(step_and_metrics) -> None:
      s, device_metrics = step_and_metrics
      host = strategy.host_metrics(device_metrics)
      _check_health(host, where(s))
      for k, v in host.items():
        window.setdefault(k, []).append(v)
      if (s + 1) % tc.log_every_steps == 0:
        means = {k: float(np.mean(v)) for k, v in window.items()}
        window.clear()
        writer.write("train", s + 1, (s + 1) / steps_per_epoch, "train", means)
        bar.set_postfix(loss=f"{means['loss']:.4g}")
        logging.info("step %d/%d: %s", s + 1, total_steps,
                     ", ".join(f"{k}={v:.5g}" for k, v in sorted(means.items())))

    batches = pipeline.iterate(train_ds, book.step, num_threads=tc.data_threads,
                               prefetch=tc.prefetch_batches)
    step = book.step
    loop_state = strategy.to_loop_state(state)  # shard_map: the same object (donated below).
    while step < total_steps and not book.finished:
      loop_state, metrics = strategy.train_step(loop_state, strategy.place_batch(next(batches)))
      if pending is not None:
        consume(pending)
      pending = (step, metrics)
      step += 1
      bar.update(1)
      epoch_end = step % steps_per_epoch == 0
      ckpt_due = tc.checkpoint_every_steps > 0 and step % tc.checkpoint_every_steps == 0
      if not (epoch_end or ckpt_due):
        continue
      consume(pending)
      pending = None
      book.step = step
      state = strategy.to_canonical(loop_state)
      if epoch_end:
        book.epoch = step // steps_per_epoch
        if VALIDATION in eval_sources:
          val = evaluate(eval_step, state, eval_sources[VALIDATION], name=VALIDATION, **eval_kw)
          _check_health(val, f"in the {VALIDATION} evaluation after step {step}")
          writer.write("eval", step, book.epoch, VALIDATION, val)
          logging.info("epoch %d (step %d) %s: %s", book.epoch, step, VALIDATION,
                       ", ".join(f"{k}={v:.5g}" for k, v in sorted(val.items())))
          if val["loss"] < book.best_validation_loss:
            book.best_validation_loss = val["loss"]
            book.best_step = step
            book.epochs_without_improvement = 0
            for s in best_ckpt.all_steps():  # Left by an interrupted run past this point.
              if s >= step:
                best_ckpt.delete(s)
            best_ckpt.save(step, state, book.to_json())
          else:
            book.epochs_without_improvement += 1
            patience = tc.early_stopping_patience
            if patience > 0 and book.epochs_without_improvement >= patience:
              book.finished = True
              book.stop_reason = (f"early stopping: no improvement of {VALIDATION} loss for "
                                  f"{patience} epochs (best {book.best_validation_loss:.6g} "
                                  f"at step {book.best_step})")
        if step == total_steps:
          book.finished = True
          book.stop_reason = book.stop_reason or f"completed {tc.num_epochs} epochs"
      ckpt.save(step, state, book.to_json())
    state = strategy.to_canonical(loop_state)
    del loop_state
    bar.close()
    logging.info("Training finished at step %d: %s", book.step, book.stop_reason)

  best_step = best_ckpt.latest_step()
  if best_step is not None:
    state, _ = best_ckpt.restore(best_step, state)
    logging.info("Restored the best weights (step %d) from %s", best_step, best_ckpt.directory)
  final: dict[str, Any] = {}
  final_step = best_step if best_step is not None else book.step
  for split, source in eval_sources.items():
    final[split] = evaluate(eval_step, state, source, name=split, **eval_kw)
    _check_health(final[split], f"in the final {split} evaluation")
    writer.write("final", final_step, final_step / steps_per_epoch, split, final[split])
    logging.info("final %s: %s", split,
                 ", ".join(f"{k}={v:.5g}" for k, v in sorted(final[split].items())))
  predict = make_predict_fn(make_predict_step(model, mesh), state, eval_sources,
                            global_batch_size=tc.eval_batch_size, mesh=mesh)
  analysis = task.analyse(predict, workdir) or {}
  final["analysis"] = analysis
  if is_chief:
    _write_json(os.path.join(workdir, "final_metrics.json"),
                {"step": book.step, "best_step": best_step, "stop_reason": book.stop_reason,
                 "metrics": final})
  writer.close()
  ckpt.close()
  best_ckpt.close()
  return final


# ----------------------------------------------------------------------------- inference


def load_trained(config: ml_collections.ConfigDict, workdir: str, *,
                 which: str = "best") -> tuple[Task, nn.Module, dict]:
  """(task, model, variables) of a trained run: the weights of the newest checkpoint in workdir/<which> ("best" or "checkpoints").

  The task is built from ``config`` (its training source gives the example the state
  tree is traced on; no model is initialised or compiled), and the TrainState of the
  newest step is restored onto the first local CPU device. ``variables`` is
  ``{"params": ..., **model_state}``, ready for ``model.apply(variables, batch,
  train=False)``; the optimiser state is dropped.

  Raises:
    ValueError: ``which`` is neither "best" nor "checkpoints".
    FileNotFoundError: no complete checkpoint in ``workdir/<which>``.
  """
  if which not in ("best", "checkpoints"):
    raise ValueError(f"load_trained: which={which!r}; expected 'best' or 'checkpoints'")
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), which)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"load_trained: {directory} does not exist (not a trained "
                            "workdir, or training has not saved a checkpoint yet)")
  task = tasks.get_task(config)
  model = task.build_model()
  cpu = jax.local_devices(backend="cpu")[0]
  mesh = parallel.make_mesh([cpu])
  train_source = task.train_source()
  steps_per_epoch = pipeline.num_steps_per_epoch(
      len(train_source), config.train.global_batch_size, config.train.steps_per_epoch)
  tx = config_lib.make_optimizer(config.optimizer, steps_per_epoch * config.train.num_epochs)
  example = pipeline.stack_examples([train_source[0]], name="train", indices=[0])
  example["mask"] = np.ones((1,), np.float32)
  # Shapes and dtypes of the TrainState only (tracing, no compilation or initialisation).
  abstract = jax.eval_shape(lambda: create_train_state(model, tx, example, config.seed, mesh))
  single = jax.sharding.SingleDeviceSharding(cpu)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                        abstract)
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=None)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"load_trained: no complete checkpoint in {directory}")
    state, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  logging.info("load_trained: step %d from %s onto %s", step, directory, cpu)
  return task, model, _variables(state.params, state.model_state)
