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
device's batch into ``k`` contiguous micro-batches run in a ``lax.scan`` (unrolled on the CPU,
where XLA's convolutions inside a loop are slow), accumulating
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
import shutil
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
from recoil_jax import io
from recoil_jax.tasks import Task

ERROR_PREFIX = "error/"
VALIDATION = "validation"


class TrainState(train_state.TrainState):
  """Flax TrainState plus mutable model collections and the base RNG key.

  Attributes:
    model_state: the task's mutable collections (``Task.mutable_collections``, e.g.
      ``{"batch_stats": ...}``): updated in training steps and averaged over devices;
      empty dict if the model has none.
    constants: every other non-``params`` collection the model created at ``init``
      (precomputed tables, complex constants): passed to ``apply`` unchanged, never
      averaged or updated; checkpointed with the state.
    rng: base PRNG key (uint32[2]) folded with step and device index every step.
  """
  model_state: Any
  constants: Any
  rng: jax.Array


@dataclasses.dataclass
class Bookkeeping:
  """Trainer state outside the TrainState, checkpointed as JSON."""
  step: int = 0  # Completed training steps.
  # Per-step training metrics since the last "train" log record: a resumed run continues
  # the same logging window, so its first record averages the same steps as an unbroken run.
  log_window: dict = dataclasses.field(default_factory=dict)
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


def _variables(params, model_state, constants) -> dict[str, Any]:
  return {"params": params, **constants, **model_state}


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


def _unroll_micro_batches() -> bool:
  """Whether the micro-batch loop is unrolled: on the CPU, where XLA runs convolutions inside a
  while loop on a much slower path (the SBND UResNet at 3×64×128, two micro-batches of one
  event, one core: 1.20 s per step as a loop, 0.32 s unrolled, 0.27–0.29 s for the same batch in
  one piece, ``scripts/bench_grad_accum.py``; a jax.profiler trace puts the difference in the
  convolutions). Unrolled, the step compiles the model ``grad_accum_steps`` times. Elsewhere the
  loop stays a loop."""
  return jax.default_backend() == "cpu"


def _device_gradients(model: nn.Module, task: Task, params, model_state, constants, rng, step,
                      batch, *, grad_accum_steps: int):
  """One device's part of a training step, under ``shard_map`` or ``pmap`` (axis ``'data'``).

  The device batch ``[b, ...]`` is split into ``grad_accum_steps`` contiguous
  micro-batches ``[b / k, ...]`` run one after another (``lax.scan``, unrolled on the CPU:
  `_unroll_micro_batches`); mutable
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
      variables = _variables(params, model_state, constants)
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
                                         (micro_batches, jnp.arange(k)),
                                         unroll=_unroll_micro_batches())
  grads, sums, counts, totals = acc
  terms = _global_terms(sums, counts, totals)
  count = terms["loss"][1]
  grads = jax.tree.map(lambda g: jax.lax.psum(g, parallel.DATA_AXIS) / count, grads)
  metrics = {name: s / c for name, (s, c) in terms.items()}
  return grads, _average_model_state(model_state), metrics


def _conjugate_complex(grads):
  """``conj`` of complex leaves: the gradient optax expects for complex parameters.

  For a real loss L of a complex parameter z, ``jax.grad`` returns conj(∂L/∂z) (2 conj(z −
  t) for L = |z − t|²), whereas optax, like PyTorch, expects ∂L/∂z* (2 (z − t)), so that
  ``z − lr · g`` is steepest descent. Real leaves are unchanged.
  """
  return jax.tree.map(lambda g: jnp.conj(g) if jnp.iscomplexobj(g) else g, grads)


def _apply_update(state: TrainState, grads, model_state, metrics, schedule):
  grads = _conjugate_complex(grads)
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

  def per_device(params, model_state, constants, rng, step, batch):
    return _device_gradients(model, task, params, model_state, constants, rng, step, batch,
                             grad_accum_steps=grad_accum_steps)

  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P(), P(), P(), P(), P(parallel.DATA_AXIS)),
                          out_specs=(P(), P(), P()))

  def train_step(state: TrainState, batch):
    grads, new_model_state, metrics = sharded(state.params, state.model_state, state.constants,
                                              state.rng, state.step, batch)
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
        model, task, state.params, state.model_state, state.constants, state.rng, state.step,
        batch, grad_accum_steps=grad_accum_steps)
    return _apply_update(state, grads, new_model_state, metrics, schedule)

  return jax.pmap(per_device, axis_name=parallel.DATA_AXIS,
                  devices=parallel.pmap_devices(mesh), donate_argnums=0)


def make_eval_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh):
  """The jitted ``eval_step(state, batch) -> {name: (sum, count)}`` (global, replicated)."""

  def per_device(params, model_state, constants, batch):
    outputs = model.apply(_variables(params, model_state, constants), batch, train=False)
    return _global_terms(*_local_terms(task.loss_terms(outputs, batch), outputs))

  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)), out_specs=P())

  def eval_step(state: TrainState, batch):
    return sharded(state.params, state.model_state, state.constants, batch)

  rep = parallel.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(rep, parallel.data_sharded(mesh)), out_shardings=rep)


def make_predict_step(model: nn.Module, mesh: jax.sharding.Mesh,
                      outputs: Sequence[str] | None = None):
  """The jitted ``predict_step(variables, batch) -> outputs`` (sharded on ``'data'``).

  ``variables`` are replicated over ``mesh``; ``outputs`` selects model outputs on the
  device (None = all), so unselected outputs are never transferred to the host.
  """

  def per_device(variables, batch):
    out = model.apply(variables, batch, train=False)
    if outputs is None:
      return out
    missing = [k for k in outputs if k not in out]
    if missing:
      raise KeyError(f"predict: outputs {missing} are not model outputs {sorted(out)}")
    return {k: out[k] for k in outputs}

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)),
                          out_specs=P(parallel.DATA_AXIS))
  return jax.jit(sharded, in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=parallel.data_sharded(mesh))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       example_batch: Mapping[str, np.ndarray], seed: int,
                       mesh: jax.sharding.Mesh,
                       mutable_collections: Sequence[str] = ("batch_stats",)) -> TrainState:
  """Initialises the model on ``example_batch`` (host arrays) and replicates the state.

  ``mutable_collections`` (the task's) become ``model_state``; every other non-``params``
  collection becomes ``constants``.
  """
  rng = jax.random.PRNGKey(seed)
  batch = parallel.replicate(dict(example_batch), mesh)

  def init(rng, batch):
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, batch, train=False)
    params, model_state, constants = tasks.split_collections(variables, mutable_collections)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                              model_state=model_state, constants=constants, rng=state_rng)
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
  """metrics.jsonl + TensorBoard, written by process 0 only.

  On a resume from step ``S`` the log is first cut back to what the checkpoint knows:
  ``train`` / ``eval`` records with ``step <= S`` are kept, later ones and ``final``
  records (rewritten at the end of every run) are dropped, the file is rewritten
  atomically, and TensorBoard's events are rebuilt from the kept records. The log of a
  resumed run therefore reads as if the run had never stopped.
  """

  def __init__(self, workdir: str, enabled: bool, resume_step: int):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    path = os.path.join(workdir, "metrics.jsonl")
    kept = [r for r in _read_jsonl(path)
            if r.get("event") in ("train", "eval") and int(r.get("step", -1)) <= resume_step]
    io.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    tb_dir = os.path.join(workdir, "tensorboard")
    if os.path.isdir(tb_dir):
      shutil.rmtree(tb_dir)
    self._tb = _summary_writer_class()(tb_dir)
    for r in kept:
      self._add_scalars(r["event"], r["step"], r["split"], r["metrics"])
    self._jsonl = open(path, "a", encoding="utf-8")

  def _add_scalars(self, event, step, split, metrics) -> None:
    prefix = split if event != "final" else f"final_{split}"
    for k, v in metrics.items():
      self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))

  def write(self, event: str, step: int, epoch: float, split: str,
            metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"event": event, "step": int(step), "epoch": float(epoch), "split": split,
              "metrics": {k: float(v) for k, v in metrics.items()}, "time": time.time()}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._add_scalars(event, step, split, record["metrics"])
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  """Records of a metrics.jsonl; a torn last line (a killed write) is dropped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("%s: dropping an unreadable line (a write cut short): %.80r", path, line)
  return records


def report(message: str) -> None:
  """One line for the person running the job: process 0, stdout, above the progress bar."""
  if jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(message)


def _fmt_metrics(metrics: Mapping[str, float]) -> str:
  return ", ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))


#: ``config`` keys that may change between the runs of one workdir (they do not change the
#: model, the data or the optimiser's trajectory up to the checkpoint). Prefixes end in ".".
RESUMABLE_CONFIG_KEYS = (
    "train.num_epochs", "train.early_stopping_patience", "train.progress_bar",
    "train.data_threads", "train.prefetch_batches", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.max_checkpoints_to_keep", "train.eval_batch_size",
    "train.strategy", "train.grad_accum_steps", "parallel.", "analysis.", "data.data_dir",
    "model.sparse_backend")


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
  """``{dotted key: leaf}`` of a config JSON dict (``config.to_json_best_effort()``)."""
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(flatten_config(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """``{dotted key: (old, new)}`` for every leaf of two config JSON dicts that differs."""
  fo, fn = flatten_config(dict(old)), flatten_config(dict(new))
  missing = object()
  return {k: (fo.get(k, "<absent>"), fn.get(k, "<absent>")) for k in sorted(set(fo) | set(fn))
          if fo.get(k, missing) != fn.get(k, missing)}


def check_resumable_config(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple]:
  """Compares ``config`` with the workdir's ``config.json`` before anything is restored.

  Returns:
    The differences in :data:`RESUMABLE_CONFIG_KEYS` (logged; the new values apply).

  Raises:
    ValueError: the workdir has a checkpoint and another key differs (another config or
      variant: its checkpoint cannot be resumed); the message lists each key, old → new.
  """
  path = os.path.join(workdir, "config.json")
  has_checkpoint = any(d.isdigit() for d in _listdir(os.path.join(workdir, "checkpoints")))
  if not (os.path.exists(path) and has_checkpoint):
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      old = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); move the workdir aside or repair "
                       "the file") from e
  new = json.loads(config.to_json_best_effort())
  diff = config_differences(old, new)
  allowed = lambda k: any(k == p or (p.endswith(".") and k.startswith(p))  # noqa: E731
                          for p in RESUMABLE_CONFIG_KEYS)
  blocking = {k: v for k, v in diff.items() if not allowed(k)}
  if blocking:
    lines = "\n".join(f"  {k}: {o!r} -> {n!r}" for k, (o, n) in blocking.items())
    raise ValueError(
        f"workdir {workdir} holds a run of another config; these keys differ from its "
        f"config.json:\n{lines}\nUse a new --workdir (or the original config) to go on.")
  return {k: v for k, v in diff.items() if allowed(k)}


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  io.write_json_atomic(os.path.join(workdir, "config.json"),
                       json.loads(config.to_json_best_effort()))


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


def _local_variables(state: TrainState) -> dict[str, Any]:
  """``{"params", **collections}`` of a replicated state, on this process's first device."""
  device = jax.local_devices()[0]

  def local(x):
    if isinstance(x, jax.Array):
      return jax.device_put(x.addressable_data(0), device)
    return x

  return jax.tree.map(local, _variables(state.params, state.model_state, state.constants))


def make_trained(model: nn.Module, state: TrainState, sources: Mapping[str, Any], *,
                 step: int, eval_batch_size: int) -> tasks.Trained:
  """A :class:`tasks.Trained` bound to ``state``'s weights, on this process's devices only.

  Needs no other process: ``predict`` runs over a whole split on the local devices
  (a ``('data',)`` mesh of them, batches of ``eval_batch_size``), ``apply`` on the first
  local device. Outputs are numpy, in source order, padding removed.
  """
  variables = _local_variables(state)
  local_mesh = parallel.make_mesh(jax.local_devices())
  batch_size = eval_batch_size - eval_batch_size % local_mesh.size or local_mesh.size
  mesh_variables = jax.device_put(variables, parallel.replicated(local_mesh))
  steps: dict[Any, Any] = {}

  def predict(split: str, outputs: Sequence[str] | None = None,
              fields: Sequence[str] | None = None) -> dict[str, Any]:
    if split not in sources:
      raise KeyError(f"predict: unknown split {split!r}; splits: {sorted(sources)}")
    key = None if outputs is None else tuple(outputs)
    if key not in steps:
      steps[key] = make_predict_step(model, local_mesh, key)
    source = sources[split]
    ds = pipeline.eval_batches(source, global_batch_size=batch_size, process_index=0,
                               process_count=1, name=split)
    outs, cols = [], []
    for batch in pipeline.iterate(ds, 0):
      placed = jax.device_put(batch, parallel.data_sharded(local_mesh))
      outs.append(jax.tree.map(np.asarray, steps[key](mesh_variables, placed)))
      keep = [k for k in batch if k != "mask"] if fields is None else list(fields)
      missing = [k for k in keep if k not in batch]
      if missing:
        raise KeyError(f"predict({split!r}): fields {missing} not in the examples "
                       f"{sorted(batch)}")
      cols.append({k: batch[k] for k in keep})
    n = len(source)
    result = {k: np.concatenate([c[k] for c in cols])[:n] for k in (cols[0] if cols else {})}
    result["outputs"] = {k: np.concatenate([o[k] for o in outs])[:n]
                         for k in (outs[0] if outs else {})}
    return result

  jitted_apply = jax.jit(lambda v, b: model.apply(v, b, train=False))

  def apply(batch: Mapping[str, Any]) -> dict[str, Any]:
    batch = {k: np.asarray(v) for k, v in batch.items()}
    if "mask" not in batch:
      n = len(next(iter(batch.values())))
      batch["mask"] = np.ones((n,), np.float32)
    return jax.tree.map(np.asarray, jitted_apply(variables, batch))

  return tasks.Trained(model=model, variables=variables, step=step, predict=predict,
                       apply=apply)


# ----------------------------------------------------------------------------- main loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       task: Task | None = None,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Trains (or resumes) in ``workdir``, then evaluates the best weights on every split.

  Order: the config is checked against the workdir's (before anything is restored) and
  by ``task.validate()``; data and model are built; the newest readable checkpoint is
  restored; training runs to ``num_epochs`` (or early stopping); every split is evaluated
  with the best weights; process 0 runs ``task.analyse`` and writes ``final_metrics.json``.

  Args:
    config: the experiment config (``config_lib.base_config`` fields plus the task's).
    workdir: output directory (created); the unit of resumption.
    task: optional task instance (default: ``tasks.get_task(config)``).
    mesh: optional ``('data',)`` mesh (default: all devices, ``parallel.make_mesh()``).

  Returns:
    ``{split: {term: value}}`` for every evaluation split with the best weights; on
    process 0 also ``"analysis"``: whatever ``task.analyse`` returned.
  """
  workdir = os.path.abspath(workdir)
  if config.mode not in config_lib.MODES:
    raise ValueError(f"config.mode={config.mode!r} is not one of {config_lib.MODES}")
  if config.mode == "evaluate":
    return evaluate_trained(config, workdir, task=task, mesh=mesh)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh() if mesh is None else mesh
  tc = config.train
  config_lib.validate_train(tc, mesh.size)  # Before the task builds its datasets.
  changed = check_resumable_config(config, workdir)
  task = tasks.get_task(config) if task is None else task
  task.validate()
  is_chief = jax.process_index() == 0
  process_count = jax.process_count()

  report(f"Preparing the {config.task!r} data (built once into its data folder, then reused)")
  if process_count > 1:  # Process 0 builds the datasets once; the others then reuse them.
    if is_chief:
      task.train_source()
      task.eval_sources()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("recoil_jax: datasets prepared by process 0")
  train_source = task.train_source()
  eval_sources = dict(task.eval_sources())
  _final_evaluation_sources(task, eval_sources)  # Names checked before any training.
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
  state = create_train_state(model, tx, example, config.seed, mesh, task.mutable_collections)
  strategy = make_strategy(tc.strategy, model, task, mesh, schedule,
                           grad_accum_steps=tc.grad_accum_steps)
  eval_step = make_eval_step(model, task, mesh)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=tc.max_checkpoints_to_keep)
  best_ckpt = checkpointing.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
  book = Bookkeeping()
  restored = ckpt.restore_latest(state)
  if restored is not None:
    _, state, meta = restored
    book = Bookkeeping.from_json(meta)
    report(f"Resumed {workdir} at step {book.step} (epoch {book.epoch}"
           f"{', finished' if book.finished else ''}).")
    for k, (old, new) in changed.items():
      report(f"  config {k}: {old!r} -> {new!r}")
  if is_chief:
    _write_config(config, workdir)
  writer = _Writer(workdir, enabled=is_chief, resume_step=book.step)
  eval_kw = dict(global_batch_size=tc.eval_batch_size, mesh=mesh,
                 num_threads=tc.data_threads, prefetch=tc.prefetch_batches)
  _reopen_if_extended(book, total_steps, tc.early_stopping_patience)

  def where(step: int) -> str:
    return (f"at training step {step} (0-based global step = index of the batch; "
            f"epoch {step // steps_per_epoch})")

  if not book.finished:
    report(f"Training {total_steps} steps ({tc.num_epochs} epochs x {steps_per_epoch} steps, "
           f"global batch {batch_size}, {mesh.size} devices, {process_count} processes, strategy "
           f"{strategy.name}, {tc.grad_accum_steps} micro-batches per device batch) from step "
           f"{book.step} into {workdir}")
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total_steps, initial=book.step, unit="step", dynamic_ncols=True,
               disable=not (is_chief and tc.progress_bar))
    window: dict[str, list[float]] = {k: list(v) for k, v in book.log_window.items()}
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
        logging.info("step %d/%d: %s", s + 1, total_steps, _fmt_metrics(means))

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
          report(f"epoch {book.epoch} (step {step}) {VALIDATION}: {_fmt_metrics(val)}")
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
      book.log_window = {k: list(v) for k, v in window.items()}
      ckpt.save(step, state, book.to_json())
    state = strategy.to_canonical(loop_state)
    del loop_state
    bar.close()
    report(f"Training finished at step {book.step}: {book.stop_reason}")
  else:
    report(f"{workdir} has finished training ({book.stop_reason}); evaluating its best "
           "weights again.")

  best_step = best_ckpt.latest_step()
  if best_step is not None:
    restored_best = best_ckpt.restore_latest(state)
    if restored_best is not None:
      best_step, state, _ = restored_best
      logging.info("Restored the best weights (step %d) from %s", best_step,
                   best_ckpt.directory)
  final: dict[str, Any] = {}
  final_step = best_step if best_step is not None else book.step
  for split, source in _final_evaluation_sources(task, eval_sources).items():
    final[split] = evaluate(eval_step, state, source, name=split, **eval_kw)
    _check_health(final[split], f"in the final {split} evaluation")
    writer.write("final", final_step, final_step / steps_per_epoch, split, final[split])
  writer.close()
  ckpt.close()
  best_ckpt.close()
  if is_chief:  # The analysis and its files: process 0 alone, on its own devices.
    trained = make_trained(model, state, eval_sources, step=final_step,
                           eval_batch_size=tc.eval_batch_size)
    final["analysis"] = task.analyse(trained, workdir) or {}
    io.write_json_atomic(os.path.join(workdir, "final_metrics.json"),
                         {"step": book.step, "best_step": best_step,
                          "stop_reason": book.stop_reason, "metrics": final})
  return final


def _final_evaluation_sources(task: Task, eval_sources: Mapping[str, Any]) -> dict[str, Any]:
  """The evaluation splits of the closing evaluation: ``task.final_evaluation_splits``."""
  names = task.final_evaluation_splits
  if names is None:
    return dict(eval_sources)
  unknown = sorted(set(names) - set(eval_sources))
  if unknown:
    raise ValueError(f"{type(task).__name__}.final_evaluation_splits names {unknown}, which "
                     f"are not evaluation splits (have {sorted(eval_sources)})")
  return {k: v for k, v in eval_sources.items() if k in names}


#: Keys that may differ between a training run and an evaluation of its weights.
EVALUATION_CONFIG_KEYS = ("mode", "data.", "analysis.", "train.", "parallel.",
                          "model.sparse_backend")
EVALUATION_DIR = "evaluation"


def evaluate_trained(config: ml_collections.ConfigDict, workdir: str, *,
                     task: Task | None = None,
                     mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """``config.mode = "evaluate"``: a trained workdir's best weights on the task's splits.

  Nothing is trained and nothing of the training run is changed: the config is checked
  against the run's ``config.json`` (only data, analysis, train and parallel keys may
  differ: new files, more or fewer events, another batch size), the task's evaluation
  splits are evaluated exactly (any number of events; the last batch is padded) with the
  newest readable ``best/`` weights (else ``checkpoints/``), and process 0 runs the
  analysis into ``<workdir>/evaluation/`` with its ``config.json`` and
  ``final_metrics.json``.

  Returns:
    ``{split: {term: value}}``, plus ``"analysis"`` on process 0.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  tc = config.train
  config_lib.validate_train(tc, mesh.size)
  path = os.path.join(workdir, "config.json")
  steps = {w: [d for d in _listdir(os.path.join(workdir, w)) if d.isdigit()]
           for w in ("best", "checkpoints")}
  if not os.path.exists(path) or not (steps["best"] or steps["checkpoints"]):
    raise FileNotFoundError(f"config.mode='evaluate': {workdir} holds no trained run "
                            "(config.json and a checkpoint in best/ or checkpoints/)")
  with open(path, encoding="utf-8") as f:
    trained_config = json.load(f)
  diff = config_differences(trained_config, json.loads(config.to_json_best_effort()))
  blocking = {k: v for k, v in diff.items()
              if not any(k == p or (p.endswith(".") and k.startswith(p))
                         for p in EVALUATION_CONFIG_KEYS)}
  if blocking:
    lines = "\n".join(f"  {k}: {o!r} -> {n!r}" for k, (o, n) in blocking.items())
    raise ValueError(f"config.mode='evaluate': the model or optimiser differs from the run "
                     f"in {workdir}:\n{lines}")
  task = tasks.get_task(config) if task is None else task
  task.validate()
  is_chief = jax.process_index() == 0
  report(f"Preparing the {config.task!r} data for evaluation")
  eval_sources = dict(task.eval_sources())
  if not eval_sources:
    raise ValueError("config.mode='evaluate': the task has no evaluation split with data")
  model = task.build_model()
  first = next(iter(eval_sources.values()))
  per_device = tc.eval_batch_size // mesh.size
  rows = [first[i % len(first)] for i in range(per_device)]
  example = pipeline.stack_examples(rows, name="evaluation", indices=list(range(per_device)))
  example["mask"] = np.ones((per_device,), np.float32)
  tx = config_lib.make_optimizer(config.optimizer, 1)  # Its state's tree, for the restore.
  state = create_train_state(model, tx, example, config.seed, mesh, task.mutable_collections)
  restored, which = None, ""
  for which in ("best", "checkpoints"):
    if steps[which]:
      ckpt = checkpointing.Checkpointer(os.path.join(workdir, which), max_to_keep=None)
      try:
        restored = ckpt.restore_latest(state)
      finally:
        ckpt.close()
      if restored is not None:
        break
  if restored is None:
    raise FileNotFoundError(f"config.mode='evaluate': no readable checkpoint in {workdir}")
  step, state, _ = restored
  out_dir = os.path.join(workdir, EVALUATION_DIR)
  report(f"Evaluating the weights of step {step} ({which}/) on "
         f"{', '.join(f'{k} ({len(v)} events)' for k, v in eval_sources.items())}")
  eval_step = make_eval_step(model, task, mesh)
  final: dict[str, Any] = {}
  for split, source in _final_evaluation_sources(task, eval_sources).items():
    final[split] = evaluate(eval_step, state, source, name=split,
                            global_batch_size=tc.eval_batch_size, mesh=mesh,
                            num_threads=tc.data_threads, prefetch=tc.prefetch_batches)
    _check_health(final[split], f"in the evaluation of {split}")
  if is_chief:
    os.makedirs(out_dir, exist_ok=True)
    _write_config(config, out_dir)
    trained = make_trained(model, state, eval_sources, step=step,
                           eval_batch_size=tc.eval_batch_size)
    final["analysis"] = task.analyse(trained, out_dir) or {}
    io.write_json_atomic(os.path.join(out_dir, "final_metrics.json"),
                         {"step": step, "weights": which, "metrics": final})
  return final


def _reopen_if_extended(book: Bookkeeping, total_steps: int, patience: int) -> None:
  """Un-finishes a finished run that the config now lets train further.

  A run that completed its epochs goes on when ``train.num_epochs`` grew; one stopped early
  goes on when ``train.early_stopping_patience`` grew past its epochs without improvement
  (0 = off). The learning-rate schedule is that of the new ``total_steps``.
  """
  if not book.finished or book.step >= total_steps:
    return
  if patience > 0 and book.epochs_without_improvement >= patience:
    report(f"The run stopped early ({book.stop_reason}); raise "
           "config.train.early_stopping_patience to train it further.")
    return
  report(f"Training resumes past the finished step {book.step} up to step {total_steps} "
         "(the learning-rate schedule now spans the new total).")
  book.finished = False
  book.stop_reason = ""


# ----------------------------------------------------------------------------- inference


def load_trained(config: ml_collections.ConfigDict, workdir: str, *,
                 which: str = "best") -> tuple[Task, nn.Module, dict]:
  """(task, model, variables) of a trained run: the weights of the newest checkpoint in workdir/<which> ("best" or "checkpoints").

  For notebooks and scripts outside a run (a run's own analysis gets ``tasks.Trained``).
  The task is built from ``config`` (its training source gives the example the state
  tree is traced on; no model is initialised or compiled), and the TrainState of the
  newest readable step is restored onto the first local CPU device. ``variables`` is
  ``{"params": ..., **collections}``, ready for ``model.apply(variables, batch,
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
  abstract = jax.eval_shape(lambda: create_train_state(model, tx, example, config.seed, mesh,
                                                       task.mutable_collections))
  single = jax.sharding.SingleDeviceSharding(cpu)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                        abstract)
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=None)
  try:
    restored = ckpt.restore_latest(target)
    if restored is None:
      raise FileNotFoundError(f"load_trained: no complete checkpoint in {directory}")
    step, state, _ = restored
  finally:
    ckpt.close()
  logging.info("load_trained: step %d from %s onto %s", step, directory, cpu)
  return task, model, _variables(state.params, state.model_state, state.constants)
