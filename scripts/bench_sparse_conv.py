"""Benchmark: the TPC paper's network on simulated 50 keV tracks, recoil_jax vs its peers.

Runs, on the *same* batch of simulated 50 keV electron recoils (the preprocessing of
arXiv 2403.15949, σ = 443 µm, 120³ voxels), the paper's network trunk
(SparseConv3d(1→50, k6, s2) → ReLU → SparseMaxPool(2, 2) → SparseConv3d(50→30, k4) → ReLU
→ SparseConv3d(30→20, k3) → ReLU → SparseMaxPool(2, 2) → dense 20×12³) plus the
homoscedastic head, forward and forward+backward, with:

  recoil_jax   sparse ops (XLA reference path), jit-compiled
  jax_dense    the same layer shapes as dense XLA 3D convolutions (lax.conv) on 120³
  spconv       spconv 2.x on CPU (``peers`` extra): forward; backward where it runs
  torch_dense  torch.nn.Conv3d / MaxPool3d on 120³ (``peers`` extra)

Each implementation runs in its own subprocess so that its peak resident memory
(ru_maxrss) is its own. Prints events/s, peak RSS and ratios recoil_jax / peer, plus the
simulator's tracks/s and the machine's load average, and writes a JSON file. On a shared
machine use ``--rounds``: the implementations then run alternately, and the speed-ups are
medians of per-round ratios (each round times both sides under similar load).

  python scripts/bench_sparse_conv.py --batch 64 --repeats 5 --out bench_sparse_conv.json
  python scripts/bench_sparse_conv.py --batch 64 --impls recoil_jax,spconv --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

IMPLS = ("recoil_jax", "jax_dense", "spconv", "torch_dense")
GRID = 120


def make_batch(batch: int, seed: int, max_voxels: int):
  """Simulated 50 keV tracks, σ = 443 µm, preprocessed as the paper → padded voxel arrays."""
  from recoil_jax.studies.tpc import preprocess as tpc_preprocess
  from recoil_jax.physics import electron_recoils as electron_recoil

  t0 = time.perf_counter()
  tracks = electron_recoil.simulate_electron_recoils(seed, 50.0, num_tracks=4 * batch)
  sim_seconds = time.perf_counter() - t0
  vox, counts = tpc_preprocess.preprocess_tracks(
      tracks.positions_mm, tracks.num_electrons, tracks.energy_kev,
      np.random.default_rng(seed), sigma_um=443.0, max_voxels=max_voxels)
  if vox.coords.shape[0] < batch:
    raise RuntimeError(f"only {vox.coords.shape[0]} of {4 * batch} tracks kept ({counts})")
  sl = slice(0, batch)
  return (vox.coords[sl], vox.charges[sl], vox.num_voxels[sl], vox.direction[sl],
          {"simulated_tracks": 4 * batch, "simulate_seconds_incl_compile": sim_seconds})


def _timeit(fn, repeats: int, budget_s: float = 60.0):
  """Median wall time of ``fn`` after one warm-up call (compilation excluded).

  Stops early once ``budget_s`` is spent (at least one timed call), so that the dense
  baselines, which take minutes per batch on a CPU, still finish.
  """
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if sum(times) > budget_s:
      break
  return float(np.median(times))


# --- implementations (each returns {"forward_s": ..., "backward_s": ... or error}) ----------
def run_recoil_jax(coords, charges, nvox, labels, repeats):
  import jax
  import jax.numpy as jnp
  from recoil_jax.losses import direction as direction_losses
  from recoil_jax.studies.tpc import model as tpc_model

  model = tpc_model.TpcDirectionNet(trunk="paper", head="cosine")
  batch = {"coords": jnp.asarray(coords), "charges": jnp.asarray(charges),
           "num_voxels": jnp.asarray(nvox)}
  params = model.init(jax.random.PRNGKey(0), batch)
  fwd = jax.jit(lambda p, b: model.apply(p, b)["pred_direction"])

  def loss(p, b):
    out = model.apply(p, b)
    return direction_losses.cosine_similarity_loss(out["pred_direction"], jnp.asarray(labels)).mean()

  grad = jax.jit(jax.grad(loss))
  out = {"forward_s": _timeit(lambda: fwd(params, batch).block_until_ready(), repeats)}
  out["backward_s"] = _timeit(
      lambda: jax.block_until_ready(grad(params, batch)), repeats)
  overflow = int(model.apply(params, batch)["overflow"][0])
  out["capacity_overflow"] = overflow
  return out


def run_jax_dense(coords, charges, nvox, labels, repeats):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  class DensePaperNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(50, (6, 6, 6), strides=2, padding="VALID")(x))
      x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
      x = nn.relu(nn.Conv(30, (4, 4, 4), padding="VALID")(x))
      x = nn.relu(nn.Conv(20, (3, 3, 3), padding="VALID")(x))
      x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
      x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
      x = nn.relu(nn.Dense(200)(x))
      x = jnp.tanh(nn.Dense(50)(x))
      x = nn.Dense(3)(x)
      return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  dense = _densify(coords, charges, nvox)
  x = jnp.asarray(dense)[..., None]
  model = DensePaperNet()
  params = model.init(jax.random.PRNGKey(0), x[:1])
  fwd = jax.jit(model.apply)
  grad = jax.jit(jax.grad(lambda p, x: -(model.apply(p, x) * jnp.asarray(labels)).sum(-1).mean()))
  return {"forward_s": _timeit(lambda: fwd(params, x).block_until_ready(), repeats),
          "backward_s": _timeit(lambda: jax.block_until_ready(grad(params, x)), repeats)}


def _densify(coords, charges, nvox):
  b = coords.shape[0]
  dense = np.zeros((b, GRID, GRID, GRID), np.float32)
  for i in range(b):
    c = coords[i, :nvox[i]]
    dense[i, c[:, 0], c[:, 1], c[:, 2]] = charges[i, :nvox[i]]
  return dense


def _torch_head():
  import torch
  return torch.nn.Sequential(
      torch.nn.Flatten(), torch.nn.Linear(20 * 12 ** 3, 500), torch.nn.ReLU(),
      torch.nn.Linear(500, 200), torch.nn.ReLU(), torch.nn.Linear(200, 50), torch.nn.Tanh(),
      torch.nn.Linear(50, 3))


def run_torch_dense(coords, charges, nvox, labels, repeats):
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  net = torch.nn.Sequential(
      torch.nn.Conv3d(1, 50, 6, stride=2), torch.nn.ReLU(), torch.nn.MaxPool3d(2, 2),
      torch.nn.Conv3d(50, 30, 4), torch.nn.ReLU(), torch.nn.Conv3d(30, 20, 3), torch.nn.ReLU(),
      torch.nn.MaxPool3d(2, 2), _torch_head())
  x = torch.from_numpy(_densify(coords, charges, nvox))[:, None]
  y = torch.from_numpy(np.asarray(labels))

  def fwd():
    with torch.no_grad():
      net(x)

  def bwd():
    net.zero_grad()
    out = torch.nn.functional.normalize(net(x), dim=-1)
    (-(out * y).sum(-1).mean()).backward()

  return {"forward_s": _timeit(fwd, repeats), "backward_s": _timeit(bwd, repeats)}


def run_spconv(coords, charges, nvox, labels, repeats):
  import spconv.pytorch as spconv
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  net = spconv.SparseSequential(
      spconv.SparseConv3d(1, 50, 6, 2), torch.nn.ReLU(), spconv.SparseMaxPool3d(2, 2),
      spconv.SparseConv3d(50, 30, 4), torch.nn.ReLU(), spconv.SparseConv3d(30, 20, 3),
      torch.nn.ReLU(), spconv.SparseMaxPool3d(2, 2), spconv.ToDense())
  head = _torch_head()
  rows = [np.concatenate([np.full((n, 1), i), coords[i, :n]], 1) for i, n in enumerate(nvox)]
  indices = torch.from_numpy(np.concatenate(rows).astype(np.int32))
  feats = torch.from_numpy(np.concatenate([charges[i, :n] for i, n in enumerate(nvox)])[:, None])
  y = torch.from_numpy(np.asarray(labels))

  def tensor():
    return spconv.SparseConvTensor(feats, indices, [GRID] * 3, len(nvox))

  def fwd():
    with torch.no_grad():
      head(net(tensor()))

  out = {"forward_s": _timeit(fwd, repeats)}
  try:
    def bwd():
      net.zero_grad()
      head.zero_grad()
      o = torch.nn.functional.normalize(head(net(tensor())), dim=-1)
      (-(o * y).sum(-1).mean()).backward()
    out["backward_s"] = _timeit(bwd, repeats)
  except Exception as e:  # spconv's CPU backward asks for a CUDA stream
    out["backward_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  return out


RUNNERS = {"recoil_jax": run_recoil_jax, "jax_dense": run_jax_dense,
           "spconv": run_spconv, "torch_dense": run_torch_dense}


def child(args) -> None:
  data = np.load(args.data)
  arrays = (data["coords"], data["charges"], data["num_voxels"], data["direction"])
  try:
    result = RUNNERS[args.impl](*arrays, args.repeats)
  except ImportError as e:
    result = {"skipped": f"not installed ({e.name}); install the 'peers' extra"}
  except Exception as e:  # a measured failure (e.g. out of memory) is a result too
    result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
  result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print("RESULT " + json.dumps(result))


def _run_child(impl: str, data_path: str, repeats: int) -> dict:
  """Runs one implementation in a fresh process; ``name@PATH`` imports recoil_jax from PATH."""
  base, _, tree = impl.partition("@")
  if base not in RUNNERS:
    raise SystemExit(f"--impls: unknown implementation {base!r}; known: {', '.join(IMPLS)}")
  env = dict(os.environ)
  if tree:
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  cmd = [sys.executable, __file__, "--impl", base, "--data", data_path, "--repeats", str(repeats)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if line:
    return json.loads(line[-1][7:])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}


def _aggregate(runs: list[dict]) -> dict:
  """Median over rounds of each timing; the first error / note of any round is kept."""
  out: dict = {"rounds": len(runs)}
  for key in ("forward_s", "backward_s"):
    vals = [r[key] for r in runs if key in r]
    if vals:
      out[key] = float(np.median(vals))
      out[key + "_per_round"] = vals
  for key in ("error", "skipped", "backward_error", "capacity_overflow"):
    notes = [r[key] for r in runs if key in r]
    if notes:
      out[key] = notes[0]
  rss = [r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r]
  if rss:
    out["peak_rss_mb"] = max(rss)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=1,
                 help="run the implementations this many times, alternating, and report medians "
                      "(and the median of the per-round speed-ups): fairer on a shared machine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-voxels", type=int, default=2048)
  p.add_argument("--impls", default=",".join(IMPLS),
                 help="comma-separated; NAME@PATH runs NAME with recoil_jax imported from the "
                      "source tree PATH (e.g. recoil_jax@/tmp/old_checkout for a before/after)")
  p.add_argument("--out", default="")
  p.add_argument("--impl", help=argparse.SUPPRESS)
  p.add_argument("--data", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.impl:
    return child(args)

  import tempfile
  impls = args.impls.split(",")
  coords, charges, nvox, labels, sim_info = make_batch(args.batch, args.seed, args.max_voxels)
  from recoil_jax.physics import electron_recoils as electron_recoil
  n_sim = 2048
  electron_recoil.simulate_electron_recoils(1, 50.0, num_tracks=n_sim)  # compile this shape
  t0 = time.perf_counter()
  electron_recoil.simulate_electron_recoils(2, 50.0, num_tracks=n_sim)
  sim_rate = n_sim / (time.perf_counter() - t0)

  report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "batch": args.batch, "active_voxels_per_event": float(np.mean(nvox)),
            "simulator_tracks_per_s_50keV": sim_rate, "impls": {},
            "load_average_1min": [os.getloadavg()[0]]}
  runs: dict[str, list[dict]] = {impl: [] for impl in impls}
  with tempfile.TemporaryDirectory() as tmp:
    data_path = os.path.join(tmp, "batch.npz")
    np.savez(data_path, coords=coords, charges=charges, num_voxels=nvox, direction=labels)
    for _ in range(args.rounds):
      for impl in impls:
        runs[impl].append(_run_child(impl, data_path, args.repeats))
        report["load_average_1min"].append(os.getloadavg()[0])
  report["impls"] = {impl: _aggregate(r) for impl, r in runs.items()}

  print(f"machine: {report['machine']}")
  print(f"batch {args.batch} simulated 50 keV tracks (σ 443 µm), "
        f"{report['active_voxels_per_event']:.0f} active voxels/event; {args.rounds} round(s) x "
        f"{args.repeats} repeats; 1-min load average during the run: "
        + " ".join(f"{v:.1f}" for v in report["load_average_1min"]))
  print(f"simulator: {sim_rate:.0f} tracks/s (50 keV, warm)")
  print(f"{'impl':<12} {'fwd ev/s':>10} {'fwd+bwd ev/s':>13} {'peak RSS MB':>12}  note")
  ours_name = next((i for i in impls if i == "recoil_jax"), impls[0])
  for impl, r in report["impls"].items():
    f = args.batch / r["forward_s"] if "forward_s" in r else float("nan")
    b = args.batch / r["backward_s"] if "backward_s" in r else float("nan")
    note = r.get("error") or r.get("skipped") or r.get("backward_error", "")
    print(f"{impl:<12} {f:>10.1f} {b:>13.1f} {r.get('peak_rss_mb', float('nan')):>12.0f}  {note}")
  ours = runs[ours_name]
  for impl in impls:
    if impl == ours_name:
      continue
    for key in ("forward_s", "backward_s"):
      ratios = [theirs[key] / mine[key] for mine, theirs in zip(ours, runs[impl])
                if key in mine and key in theirs]
      if ratios:
        report.setdefault("speedup_of_recoil_jax", {}).setdefault(impl, {})[key] = float(
            np.median(ratios))
        spread = f" (per round {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        print(f"{ours_name} vs {impl} {key[:-2]}: {np.median(ratios):.2f}x faster{spread}")
  if args.out:
    from recoil_jax import io  # pylint: disable=g-import-not-at-top
    io.write_text_atomic(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
