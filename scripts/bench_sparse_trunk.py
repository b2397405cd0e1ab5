"""Benchmark: the TPC paper's sparse trunk forward on synthetic tracks, with site counts.

Times the trunk of arXiv 2403.15949 (SparseConv3d(1→50, k6, s2) → ReLU → SparseMaxPool(2) →
SparseConv3d(50→30, k4) → ReLU → SparseConv3d(30→20, k3) → ReLU → SparseMaxPool(2) → dense
20×12³, the XLA sparse path, jit) at full width on a batch of the synthetic random-walk tracks
of ``tests/test_tpc_sparse_trunk.py`` (not the simulator: no TFDS, no physics), with static
capacities. Prints the compile + first call time, the forward time (best and median of
``--repeats`` calls), the active sites per layer against the capacities, and checks the first
``--check-events`` events against the dense implementation of the same test module (the tests
run that check on a small input; this one is at the benchmark's size).

For the whole network on simulated tracks (and its peers) see ``bench_sparse_conv.py``; for the
per-layer split of kernel-map construction and arithmetic ``profile_sparse_trunk.py``.

  python scripts/bench_sparse_trunk.py --batch 64 --repeats 3
  python scripts/bench_sparse_trunk.py --batch 8 --voxels 400 --check-events 0   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Sites of the default batch (64 synthetic tracks, 741 voxels each on average, --seed 42):
# 60 934, 12 570, 59 469, 106 402, 16 293 (measured with this script).
DEFAULT_CAPACITIES = (80_000, 17_000, 76_000, 128_000, 20_000)
LAYERS = ("conv1", "pool1", "conv2", "conv3", "pool2")


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64, help="tracks per batch")
  p.add_argument("--voxels", type=int, default=800, help="voxels kept per track (at most)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
  p.add_argument("--seed", type=int, default=42, help="seed of the synthetic tracks")
  p.add_argument("--capacities", default=",".join(map(str, DEFAULT_CAPACITIES)),
                 help="5 comma-separated static site capacities (whole batch), one per layer")
  p.add_argument("--check-events", type=int, default=2,
                 help="events checked against the dense implementation (0: no check)")
  args = p.parse_args(argv)
  capacities = tuple(int(c) for c in args.capacities.split(","))
  if len(capacities) != 5:
    p.error(f"--capacities needs 5 values, got {capacities}")
  if args.batch < 1 or args.repeats < 1 or not 0 <= args.check_events <= args.batch:
    p.error("need --batch >= 1, --repeats >= 1 and 0 <= --check-events <= --batch")

  sys.path.insert(0, REPO_ROOT)
  sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import test_tpc_sparse_trunk as trunk  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops import sparse as sp  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(args.seed)
  coords, feats, num = trunk.synthetic_tracks(rng, args.batch + 1, args.voxels)
  coords, feats, num = coords[1:], feats[1:], num[1:]  # Event 0 of the generator is empty.
  st = sp.from_padded_voxels(coords, feats, num, (trunk.GRID,) * 3)
  model = trunk.SparseTrunk(capacities=capacities)
  _, variables, counts = trunk.init_with_site_counts(model, jax.random.key(0), st)
  params = {"params": variables["params"]}
  forward = jax.jit(model.apply)

  t0 = time.perf_counter()
  jax.block_until_ready(forward(params, st))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out, overflow = jax.block_until_ready(forward(params, st))
    times.append(time.perf_counter() - t0)
  print(f"paper trunk, batch {args.batch}, {int(np.sum(num))} input voxels (synthetic tracks): "
        f"compile+first {compile_s:.2f} s, forward {min(times) * 1e3:.0f} ms best, "
        f"{np.median(times) * 1e3:.0f} ms median of {args.repeats}; "
        f"load average {os.getloadavg()}")
  print("sites per layer:", dict(zip(LAYERS, counts)), "capacities:", dict(zip(LAYERS, capacities)))
  failures = []
  if int(overflow):
    failures.append(f"capacity overflow ({int(overflow)} sites dropped): raise --capacities")
  n = args.check_events
  if n:
    want = jax.jit(trunk.dense_trunk)(
        params["params"], jnp.asarray(trunk.dense_input(coords[:n], feats[:n], num[:n])))
    err = float(np.max(np.abs(np.asarray(out[:n]) - np.asarray(want))))
    print(f"first {n} events vs the dense implementation: max abs difference {err:.2e}")
    if not np.allclose(np.asarray(out[:n]), np.asarray(want), rtol=1e-4, atol=1e-4):
      failures.append(f"events 0..{n - 1} differ from the dense implementation")
  for failure in failures:
    print("FAILED:", failure)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
