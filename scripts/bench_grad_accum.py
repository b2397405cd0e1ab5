"""The trainer's gradient accumulation on the CPU: micro-batches unrolled vs kept in a loop.

Times the trainer's own ``shard_map`` train step (``recoil_jax.train.make_strategy``) on the
SBND UResNet of ``configs/sbnd.py`` (its default, reduced network) with random wire-plane images
of ``--height`` × ``--width``, one device, for ``grad_accum_steps`` 1 and ``--accum``:

  one piece   grad_accum_steps = 1 (the whole batch at once)
  unrolled    grad_accum_steps = k as the trainer runs it on the CPU (``train._unroll_micro_batches``)
  loop        the same k micro-batches in an XLA while loop (``--loop``; what the trainer did
              before), where XLA:CPU runs the convolutions on a much slower path

Prints the first call (compilation included) and the median of ``--repeats`` steps. Inputs are
random: the timing does not depend on them.

  taskset -c 0 python scripts/bench_grad_accum.py               # 3×64×128, 2 events, k = 2
  taskset -c 0 python scripts/bench_grad_accum.py --loop
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--height", type=int, default=64)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--events", type=int, default=2, help="batch (events of 3 planes)")
  p.add_argument("--accum", type=int, default=2, help="micro-batches of the accumulating step")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--loop", action="store_true",
                 help="keep the micro-batches in a while loop (the trainer's earlier behaviour)")
  args = p.parse_args()
  if args.events % args.accum:
    raise SystemExit(f"--events {args.events} must be a multiple of --accum {args.accum}")

  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from recoil_jax import parallel, sweeps, tasks, train  # pylint: disable=g-import-not-at-top

  if args.loop:
    train._unroll_micro_batches = lambda: False  # pylint: disable=protected-access
  config = sweeps.load_config_file(os.path.join(REPO_ROOT, "configs", "sbnd.py")).get_config(None)
  config.data.height, config.data.width = args.height, args.width
  task = tasks.get_task(config)
  model = task.build_model()
  rng = np.random.default_rng(0)
  shape = (args.events, 3, args.height, args.width)
  batch = {"image": rng.normal(size=shape).astype(np.float32),
           "label": rng.integers(0, 3, size=shape).astype(np.int32),
           "mask": np.ones((args.events,), np.float32)}
  mesh = parallel.make_mesh(jax.devices()[:1])
  tx = optax.rmsprop(3e-4)
  print(f"SBND UResNet (configs/sbnd.py), {args.events} events of 3×{args.height}×{args.width}, "
        f"CPUs {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()}")
  for k in (1, args.accum):
    strategy = train.make_strategy("shard_map", model, task, mesh, optax.constant_schedule(3e-4),
                                   grad_accum_steps=k)
    state = strategy.to_loop_state(train.create_train_state(model, tx, batch, 0, mesh))
    placed = strategy.place_batch(batch)
    t0 = time.perf_counter()
    state, metrics = strategy.train_step(state, placed)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      state, metrics = strategy.train_step(state, placed)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    how = "one piece" if k == 1 else ("loop" if args.loop else "unrolled")
    print(f"grad_accum_steps {k} ({how}): first call {first:.1f} s, step {np.median(times):.3f} s")


if __name__ == "__main__":
  sys.exit(main())
