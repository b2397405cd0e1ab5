"""The one training and evaluation loop shared by every study.

``train_and_evaluate(config, workdir)`` builds the task named by ``config.task``, trains
it data-parallel with early stopping on the ``validation`` split, keeps the best weights,
evaluates every split with them and runs the task's analysis.

Parallelism. A ``('data',)`` mesh over all devices; parameters are replicated, batches
sharded on ``'data'``. ``train_step``/``eval_step`` are jitted once (the state is
donated) and run the model per device with ``jax.shard_map``, so a model sees a
device-local batch. Loss terms ``{name: (sum, count)}`` are ``psum``-reduced over
``'data'`` and ``loss = psum(sum) / psum(count)``; its gradient, taken inside the
shard_map, is the exact gradient of the global mean (JAX's transpose of the implicit
replication is a psum). Mutable collections (e.g. ``batch_stats``) are updated from the
device-local batch and averaged over devices with ``pmean`` (integer leaves: ``pmax``):
BatchNorm uses per-device batch statistics, so its results depend on the per-device
batch size. The dropout RNG is ``fold_in(fold_in(state.rng, step), device_index)``
(``device_index`` is global over processes); models get it as the ``'dropout'`` stream.

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
from recoil_jax.tasks.base import Task

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


def _reduce_terms(terms: Mapping[str, tuple[jax.Array, jax.Array]], outputs: Mapping[str, Any]
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """psum'd sums and counts of the loss terms plus ``error/*`` model outputs."""
  if "loss" not in terms:
    raise KeyError(f"task.loss_terms must return a 'loss' term; got {sorted(terms)}")
  sums, counts = {}, {}
  for name, (s, c) in terms.items():
    sums[name] = jax.lax.psum(jnp.asarray(s, jnp.float32), parallel.DATA_AXIS)
    counts[name] = jax.lax.psum(jnp.asarray(c, jnp.float32), parallel.DATA_AXIS)
  for name, value in outputs.items():
    if name.startswith(ERROR_PREFIX) and name not in sums:
      sums[name] = jax.lax.psum(jnp.sum(value).astype(jnp.float32), parallel.DATA_AXIS)
      counts[name] = jnp.float32(1.0)  # A total, not a mean.
  return sums, counts


def _average_model_state(model_state):
  def avg(x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jax.lax.pmean(x, parallel.DATA_AXIS)
    return jax.lax.pmax(x, parallel.DATA_AXIS)
  return jax.tree.map(avg, model_state)


def make_train_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh,
                    schedule: Callable[[Any], Any]):
  """The jitted ``train_step(state, batch) -> (state, metrics)`` (state donated).

  ``batch`` is a global batch sharded on ``'data'``; ``metrics`` are replicated scalars:
  every loss term (global mean), ``grad_norm`` and ``learning_rate``.
  """

  def per_device(params, model_state, rng, step, batch):
    rng = jax.random.fold_in(jax.random.fold_in(rng, step),
                             jax.lax.axis_index(parallel.DATA_AXIS))
    mutable = list(model_state.keys())

    def loss_fn(params):
      if mutable:
        outputs, new_state = model.apply(_variables(params, model_state), batch, train=True,
                                         rngs={"dropout": rng}, mutable=mutable)
      else:
        outputs = model.apply(_variables(params, model_state), batch, train=True,
                              rngs={"dropout": rng})
        new_state = {}
      sums, counts = _reduce_terms(task.loss_terms(outputs, batch), outputs)
      loss = sums["loss"] / jax.lax.stop_gradient(counts["loss"])
      return loss, (sums, counts, new_state)

    (_, (sums, counts, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    metrics = {k: sums[k] / counts[k] for k in sums}
    return grads, _average_model_state(dict(new_state)), metrics

  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P(), P(), P(), P(parallel.DATA_AXIS)),
                          out_specs=(P(), P(), P()))

  def train_step(state: TrainState, batch):
    grads, new_model_state, metrics = sharded(state.params, state.model_state, state.rng,
                                              state.step, batch)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    state = state.apply_gradients(grads=grads, model_state=new_model_state)
    return state, metrics

  rep = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, parallel.data_sharded(mesh)),
                 out_shardings=rep, donate_argnums=0)


def make_eval_step(model: nn.Module, task: Task, mesh: jax.sharding.Mesh):
  """The jitted ``eval_step(state, batch) -> {name: (sum, count)}`` (global, replicated)."""

  def per_device(params, model_state, batch):
    outputs = model.apply(_variables(params, model_state), batch, train=False)
    sums, counts = _reduce_terms(task.loss_terms(outputs, batch), outputs)
    return {k: (sums[k], counts[k]) for k in sums}

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
  task = tasks.get_task(config) if task is None else task
  mesh = parallel.make_mesh() if mesh is None else mesh
  tc = config.train
  is_chief = jax.process_index() == 0
  process_count = jax.process_count()

  train_source = task.train_source()
  eval_sources = dict(task.eval_sources())
  batch_size = tc.global_batch_size
  if batch_size % mesh.size or tc.eval_batch_size % mesh.size:
    raise ValueError(
        f"train.global_batch_size={batch_size} and train.eval_batch_size={tc.eval_batch_size} "
        f"must be divisible by the number of devices ({mesh.size})")
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
  train_step = make_train_step(model, task, mesh, schedule)
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
                 "%d processes) from step %d.", total_steps, tc.num_epochs, steps_per_epoch,
                 batch_size, mesh.size, process_count, book.step)
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total_steps, initial=book.step, unit="step", dynamic_ncols=True,
               disable=not (is_chief and tc.progress_bar))
    window: dict[str, list[float]] = {}
    pending = None  # (0-based step, device metrics) of the step still in flight.

    def consume(step_and_metrics) -> None:
      s, device_metrics = step_and_metrics
      host = {k: float(v) for k, v in parallel.fetch(device_metrics).items()}
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
    while step < total_steps and not book.finished:
      state, metrics = train_step(state, parallel.shard_batch(next(batches), mesh))
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
