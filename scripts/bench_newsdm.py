"""NEWSdm throughput on this machine: simulator events/s, NEWSnet_3D training and inference
images/s, and the streamed test-set evaluation (wall time and peak memory).

  python scripts/bench_newsdm.py                     # simulator + width 0.5 and 1.0
  python scripts/bench_newsdm.py --widths 0.5 --steps 5 --batch 64
  python scripts/bench_newsdm.py --sim_events 0 --widths --stream_events 100000  # 10⁵ fog

Training throughput is one jitted Adam step of the study's loss (μ·CCE₄ + BCE) on random
images of the authors' shape [B, 40, 40, 9], timed after compilation (median of --steps);
inference is the jitted forward pass at --eval_batch.

``--stream_events N``: the analysis' own pass over a streamed test set
(``NewsdmTask._predict_streamed``: ``source.StreamingSource`` events simulated, cleaned
and predicted chunk by chunk by ``Trained.predict``, only per-event scalars kept) for N
events of ``--stream_kind`` with the default config's model at ``--stream_width`` (freshly
initialised: the weights do not change the cost) and ``train.eval_batch_size`` =
``--eval_batch``. Reports wall time, events/s, the resident memory before / after and the
peak during the pass (``VmHWM`` reset through ``/proc/self/clear_refs`` where allowed,
else the process peak; a sampler thread also records the largest ``VmRSS`` seen), and
the RSS at 10 %, 50 % and 100 % of the events: flat when the pass is memory-bounded.
Events are simulated (the toy of recoil_jax/studies/newsdm/sim.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recoil_jax.losses import classification as cls_losses
from recoil_jax.studies.newsdm import barycentre
from recoil_jax.studies.newsdm import model as newsdm_model
from recoil_jax.studies.newsdm import readers
from recoil_jax.studies.newsdm import sim

CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "newsdm.py")


def bench_simulator(num: int) -> None:
  for kind in ("c100", "fog", "gamma"):
    t = time.perf_counter()
    ev = sim.simulate(0, num, kind)
    t_sim = time.perf_counter() - t
    t = time.perf_counter()
    images = readers.authors_format(ev["raw"])
    readers.cleaning_cuts(images)
    barycentre.max_shift_nm(images)
    t_clean = time.perf_counter() - t
    print(f"simulator {kind:>5}: {num / t_sim:8.0f} events/s simulated, "
          f"{num / (t_sim + t_clean):8.0f} events/s with format + cuts + barycentre")


def bench_training(width: float, batch: int, steps: int, architecture: str) -> None:
  net = newsdm_model.build(architecture, width=width)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.uniform(0, 0.2, (batch, 40, 40, 9)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 4, batch)),
          "mask": jnp.ones((batch,), jnp.float32)}
  data["signal"] = (data["label"] < 3).astype(jnp.float32)
  variables = jax.jit(lambda b: net.init({"params": jax.random.PRNGKey(0),
                                          "dropout": jax.random.PRNGKey(1)}, b,
                                         train=False))(data)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(6.5e-4, 0.9, 0.99)
  opt = tx.init(params)

  def loss_fn(p, s, b, key):
    out, new = net.apply({"params": p, **s}, b, train=True, mutable=list(s),
                         rngs={"dropout": key})
    four = cls_losses.multiclass_terms(out["logits"], b["label"], b["mask"])
    two = cls_losses.binary_terms(out["signal_logit"], b["signal"], b["mask"])
    return (0.53 * four["loss"][0] + two["loss"][0]) / batch, new

  @jax.jit
  def step(p, s, o, b, key):
    (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, b, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), new, o, loss

  t = time.perf_counter()
  params, state, opt, loss = step(params, state, opt, data, jax.random.PRNGKey(2))
  loss.block_until_ready()
  compile_s = time.perf_counter() - t
  times = []
  for i in range(steps):
    t = time.perf_counter()
    params, state, opt, loss = step(params, state, opt, data, jax.random.PRNGKey(3 + i))
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  print(f"{architecture} width {width}: {newsdm_model.count_parameters(params):,} parameters, "
        f"batch {batch}: {med:.3f} s/step = {batch / med:.1f} training images/s "
        f"(first step with compilation {compile_s:.1f} s)")


def bench_inference(width: float, batch: int, steps: int, architecture: str) -> None:
  net = newsdm_model.build(architecture, width=width)
  images = np.random.default_rng(0).uniform(0, 0.2, (batch, 40, 40, 9)).astype(np.float32)
  data = {"image": jnp.asarray(images)}
  variables = jax.jit(lambda b: net.init(jax.random.PRNGKey(0), b, train=False))(data)
  apply = jax.jit(lambda v, b: net.apply(v, b, train=False)["signal_logit"])
  apply(variables, data).block_until_ready()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    apply(variables, data).block_until_ready()
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  print(f"{architecture} width {width}: inference batch {batch}: {med:.3f} s/batch = "
        f"{batch / med:.1f} images/s")


def _reset_peak_rss() -> bool:
  """Resets this process's VmHWM to its current RSS (Linux ≥ 4.0); False if not allowed."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


def bench_streamed_evaluation(num: int, kind: str, width: float, batch: int,
                              chunk: int) -> dict[str, float]:
  """The analysis' streamed pass over ``num`` events of ``kind`` (module docstring)."""
  import threading  # pylint: disable=g-import-not-at-top
  from recoil_jax import parallel, sweeps, train  # pylint: disable=g-import-not-at-top
  from recoil_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.newsdm import task as newsdm_task  # pylint: disable=g-import-not-at-top

  config = sweeps.load_config_file(CONFIG_PATH).get_config()
  a = config.analysis
  a.test_signal_kinds, a.test_beam_angles_deg = ("c100",), (0.0,)
  a.test_background_kinds = (kind,)
  a.num_test_signal, a.num_test_background = batch, num
  a.test_chunk_size = chunk
  config.model.width = width
  config.train.eval_batch_size = batch
  task = newsdm_task.NewsdmTask(config)
  t = time.perf_counter()
  sources = task.test_sources()  # Brightness calibration: a few thousand events per kind.
  print(f"streamed evaluation: calibration {time.perf_counter() - t:.1f} s")
  split = newsdm_task.background_split(kind)
  warm = newsdm_task.signal_split("c100", 0.0)  # One batch: compiles the predict step.
  model = task.build_model()
  example = pipeline.stack_examples([sources[warm][0]], name="bench", indices=[0])
  example["mask"] = np.ones((1,), np.float32)
  mesh = parallel.make_mesh(jax.local_devices())
  state = train.create_train_state(model, optax.adam(1e-3), example, 0, mesh,
                                   task.mutable_collections)
  trained = train.make_trained(model, state, sources, step=0, eval_batch_size=batch)
  task._predict_streamed(trained, warm, sources[warm])  # pylint: disable=protected-access
  reset = _reset_peak_rss()
  before = newsdm_task.memory_mib()
  samples: list[tuple[float, float]] = []  # (events done, RSS MiB) — events from the cut counts.
  done = threading.Event()

  def sample() -> None:
    src = sources[split]
    while not done.wait(0.5):
      with src._lock:  # pylint: disable=protected-access
        generated = len(src.counts) * src.chunk_size
      samples.append((min(generated, num), newsdm_task.memory_mib()["rss"]))

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  pred, info = task._predict_streamed(trained, split, sources[split])  # pylint: disable=protected-access
  done.set()
  thread.join()
  assert len(pred["outputs"]["signal_logit"]) == num
  sampled_peak = max([r for _, r in samples] + [info["rss_mib_after"]])
  at = {}
  for frac in (0.1, 0.5, 1.0):
    near = [r for e, r in samples if e >= frac * num]
    at[frac] = near[0] if near else info["rss_mib_after"]
  print(f"streamed evaluation of {num} {kind} events (NEWSnet_3D width {width}, batch {batch}, "
        f"chunks of {chunk}): {info['seconds']:.1f} s = {info['events_per_second']:.1f} "
        f"events/s, {info['cpu_seconds']:.0f} CPU s = {info['events_per_cpu_second']:.1f} "
        f"events per CPU second; RSS {before['rss']:.0f} MiB before, "
        + ", ".join(f"{r:.0f} MiB at {100 * f:g} %" for f, r in at.items())
        + f"; peak {info['peak_rss_mib']:.0f} MiB ("
        + ("peak reset before the pass" if reset else "process peak") + f"), largest "
        f"sampled RSS {sampled_peak:.0f} MiB; {int(np.sum(pred['passed_cuts'] > 0.5))} "
        "events passed the cuts")
  return dict(info, sampled_peak_rss_mib=sampled_peak, rss_mib_at_10=at[0.1],
              rss_mib_at_50=at[0.5])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--widths", type=float, nargs="*", default=[0.5, 1.0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--sim_events", type=int, default=4000)
  parser.add_argument("--architecture", default="newsnet3d")
  parser.add_argument("--eval_batch", type=int, default=64,
                      help="inference / streamed-evaluation batch (train.eval_batch_size)")
  parser.add_argument("--stream_events", type=int, default=0,
                      help="time the analysis' streamed pass over this many events (0: skip)")
  parser.add_argument("--stream_kind", default="fog")
  parser.add_argument("--stream_width", type=float, default=0.25)
  parser.add_argument("--stream_chunk", type=int, default=250)
  args = parser.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if args.sim_events:
    bench_simulator(args.sim_events)
  for w in args.widths:
    bench_training(w, args.batch, args.steps, args.architecture)
    bench_inference(w, args.eval_batch, args.steps, args.architecture)
  if args.stream_events:
    bench_streamed_evaluation(args.stream_events, args.stream_kind, args.stream_width,
                              args.eval_batch, args.stream_chunk)


if __name__ == "__main__":
  main()
