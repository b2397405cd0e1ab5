"""NEWSdm throughput on this machine: simulator events/s and NEWSnet_3D training images/s.

  python scripts/bench_newsdm.py                     # simulator + width 0.5 and 1.0
  python scripts/bench_newsdm.py --widths 0.5 --steps 5 --batch 64

Training throughput is one jitted Adam step of the study's loss (μ·CCE₄ + BCE) on random
images of the authors' shape [B, 40, 40, 9], timed after compilation (median of --steps).
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--sim_events", type=int, default=4000)
  parser.add_argument("--architecture", default="newsnet3d")
  args = parser.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if args.sim_events:
    bench_simulator(args.sim_events)
  for w in args.widths:
    bench_training(w, args.batch, args.steps, args.architecture)


if __name__ == "__main__":
  main()
