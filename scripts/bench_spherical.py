r"""Spherical CNN layers: the fast path (``recoil_jax.ops.sphere.layers``) vs direct quadrature.

Times, per configuration, in its own subprocess (so that ``ru_maxrss``, the peak resident
memory, belongs to that configuration alone):

* ``S2ToSO3Conv`` (S² → SO(3), 2 → 8 channels, N = 3) and ``SO3ToSO3Conv`` (SO(3) → SO(3),
  8 → 16 channels, N = 3 → 3) at L_in = L_out = L for L in ``--L`` (16, 32, 64), batch 1:
  forward, and forward + backward (``jax.value_and_grad`` of Σ out² w.r.t. the filters);
  jitted float32 on the CPU, median over repeats after a warm-up (compilation and the
  s2fft kernel precompute excluded, reported separately as "setup");
* the same layers by direct quadrature, the arithmetic of ``recoil_jax.ops.sphere.
  reference`` (float64 numpy: the filter synthesised at every R⁻¹x / R⁻¹R' with scipy's
  Y_ℓm / explicit Wigner D, times the input, summed with the grid's weights). Forward
  only (numpy, no gradients). ``reference.py`` itself holds every (output, input) pair
  of the grid in memory at once (39 GB for S² → SO(3) at L = 16), so it runs whole only
  at ``--L_check`` (default 8), where its output and time are checked against the
  blocked evaluation used everywhere else: the same expressions on blocks of (output
  rotation, input sample) pairs, summed over input blocks; at L ≥ 16 a few blocks are
  timed and the time scaled by (pairs in the layer) / (pairs in the blocks) — the cost
  per pair is the same for every pair, the check at ``--L_check`` shows how close the
  extrapolation comes;
* the whole default spherical classifier of ``configs/kamland.py`` (L = 16 input, 2
  channels, features 8/16/16, band-limits 12/8/4, N = 3, batch 32): inference and a
  training step (forward + backward) per event; and its three correlations by direct
  quadrature at batch 32 per event (the filter synthesis is shared by the batch);
* e3nn-jax's spherical-harmonics route, if ``e3nn_jax`` is installed (it is not a
  dependency; nothing is installed by this script).

Prints markdown tables with the ratios direct / fast. Timings depend on the machine's
load: record ``uptime`` beside them.

Command (the table in /work/notes/kamland_benchmarks.md):
  nice -n 0 python scripts/bench_spherical.py                 # L = 16, 32, 64; ~40 min
  python scripts/bench_spherical.py --L 8 --L_check 4 --quick # ~8 min (JAX start-up
                                                              # and compilation per case)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DIR = 3  # Directional band-limit (the KamLAND default).
S2_CHANNELS = (2, 8)
SO3_CHANNELS = (8, 16)
BLOCK_BYTES = 512 * 2 ** 20  # Memory of the largest array of one direct-quadrature block.


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _timed(fn, *, min_seconds: float, min_repeats: int, max_repeats: int) -> list[float]:
  times = []
  start = time.perf_counter()
  while len(times) < max_repeats and (len(times) < min_repeats
                                      or time.perf_counter() - start < min_seconds):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


# ----------------------------------------------------------------------------- fast path


def _fast_layer(case: dict[str, Any]) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, layers  # pylint: disable=g-import-not-at-top
  L, kind, mode = case["L"], case["kind"], case["mode"]
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  if kind == "s2so3":
    c_in, c_out = S2_CHANNELS
    x = rng.standard_normal((1,) + grids.s2fft_grid(L, "dh").shape + (c_in,))
    module = layers.S2ToSO3Conv(c_out, L_out=L, N=N_DIR)
  else:
    c_in, c_out = SO3_CHANNELS
    x = rng.standard_normal((1,) + grids.so3_grid(L, N_DIR, "dh").shape + (c_in,))
    module = layers.SO3ToSO3Conv(c_out, L_out=L, N_out=N_DIR)
  x = jnp.asarray(x, jnp.float32)
  params = module.init(jax.random.PRNGKey(0), x)  # Builds the s2fft kernels (cached).
  if mode == "fwd":
    fn = jax.jit(module.apply)
  else:
    fn = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.square(module.apply(p, x)))))
  jax.block_until_ready(fn(params, x))
  setup = time.perf_counter() - t0
  jax.block_until_ready(fn(params, x))  # Warm-up.
  times = _timed(lambda: jax.block_until_ready(fn(params, x)), min_seconds=2.0,
                 min_repeats=5, max_repeats=200)
  return {"median_s": statistics.median(times), "repeats": len(times), "setup_s": setup,
          "params": layers.param_count(params["params"]), "flops": _xla_flops(fn, params, x),
          "ideal_direct_flops": _ideal_direct_flops(kind, L, c_in)}


def _xla_flops(fn, *args) -> float | None:
  """XLA's cost-analysis flop count of the compiled function (None if unavailable)."""
  try:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
  except Exception:  # pylint: disable=broad-except
    return None


def _ideal_direct_flops(kind: str, L: int, c_in: int) -> float:
  """Flops of direct quadrature with the filter basis tabulated beforehand (its best case):
  T[q, K, c] = Σ_p B*[q, p, K] w_p x[p, c] costs 4·Q·P·K·C_in real flops (complex basis,
  real input), K = L(2N−1) for S² → SO(3), L(2N−1)² for SO(3) → SO(3); the product with the
  filters after it is negligible. The basis itself (Q·P·K complex numbers: 104 GB for
  S² → SO(3) at L = 32) does not fit in memory beyond L ≈ 16."""
  n = 2 * N_DIR - 1
  q = n * (2 * L) * (2 * L - 1)
  p = (2 * L) * (2 * L - 1) * (1 if kind == "s2so3" else n)
  k = L * n * (1 if kind == "s2so3" else n)
  return 4.0 * q * p * k * c_in


def _fast_model(case: dict[str, Any]) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO_ROOT)
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, layers  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.kamland import model as kamland_model  # pylint: disable=g-import-not-at-top,line-too-long
  config = sweeps.load_config_file(os.path.join(REPO_ROOT, "configs", "kamland.py")).get_config()
  m, d, b = config.model, config.data, config.train.global_batch_size
  module = kamland_model.SphericalClassifier(
      features=tuple(m.features), band_limits=tuple(m.band_limits), N=m.N, sampling=d.sampling,
      hidden=tuple(m.hidden), relu_oversample=m.relu_oversample)
  rng = np.random.default_rng(0)
  x = rng.random((b,) + grids.s2fft_grid(d.band_limit, d.sampling).shape + (len(d.channels),))
  batch = {"sphere": jnp.asarray(x, jnp.float32)}
  t0 = time.perf_counter()
  variables = module.init(jax.random.PRNGKey(0), batch, train=False)
  if case["mode"] == "fwd":
    fn = jax.jit(lambda v, bt: module.apply(v, bt, train=False))
  else:
    def loss(params, v, bt):
      out, _ = module.apply({**v, "params": params}, bt, train=True, mutable=["batch_stats"])
      return jnp.mean(jnp.square(out["logit"]))
    g = jax.jit(jax.value_and_grad(loss))
    fn = lambda v, bt: g(v["params"], v, bt)  # noqa: E731
  jax.block_until_ready(fn(variables, batch))
  setup = time.perf_counter() - t0
  jax.block_until_ready(fn(variables, batch))
  times = _timed(lambda: jax.block_until_ready(fn(variables, batch)), min_seconds=3.0,
                 min_repeats=5, max_repeats=100)
  return {"median_s": statistics.median(times) / b, "batch": b, "repeats": len(times),
          "setup_s": setup, "params": layers.param_count(variables["params"]),
          "per": "event"}


# ----------------------------------------------------------------------------- direct


def _s2so3_setup(L_in: int, L_out: int, N: int, batch: int, channels, rng):
  """Inputs of the S²→SO(3) quadrature, flattened as in reference.s2_to_so3."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids  # pylint: disable=g-import-not-at-top
  c_in, c_out = channels
  s2 = grids.s2fft_grid(L_in, "dh")
  so3 = grids.so3_grid(L_out, N, "dh")
  x = rng.standard_normal((batch,) + s2.shape + (c_in,))
  kernel = (rng.standard_normal((L_out, 2 * N - 1, c_in, c_out))
            + 1j * rng.standard_normal((L_out, 2 * N - 1, c_in, c_out)))
  pts = s2.directions().reshape(-1, 3)
  w = np.broadcast_to(s2.weights[:, None], s2.shape).reshape(-1)
  e = so3.euler_angles().reshape(-1, 3)
  R = grids.euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])
  xs = x.reshape(batch, -1, c_in)
  return dict(x=x, kernel=kernel, pts=pts, w=w, R=R, xs=xs, L_out=L_out, N=N,
              out_shape=(batch,) + so3.shape + (c_out,))


def _s2so3_block(s, q, p):
  """reference.s2_to_so3's arithmetic for output rotations q and input samples p."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, wigner  # pylint: disable=g-import-not-at-top
  L, N = s["L_out"], s["N"]
  local = np.einsum("qji,pj->qpi", s["R"][q], s["pts"][p])
  theta, phi = grids.cartesian_to_spherical(local)
  Y = wigner.spherical_harmonics(L, theta, phi)[..., L - N:L + N - 1]
  psi = np.einsum("qpln,lncd->qpcd", Y, s["kernel"])
  return np.einsum("bpc,p,qpcd->bqd", s["xs"][:, p], s["w"][p], np.conj(psi)).real


def _so3so3_setup(L_in: int, L_out: int, N_in: int, N_out: int, batch: int, channels, rng):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids  # pylint: disable=g-import-not-at-top
  c_in, c_out = channels
  src = grids.so3_grid(L_in, N_in, "dh")
  dst = grids.so3_grid(L_out, N_out, "dh")
  x = rng.standard_normal((batch,) + src.shape + (c_in,))
  shape = (L_out, 2 * N_out - 1, 2 * N_in - 1, c_in, c_out)
  kernel = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
  e_src = src.euler_angles().reshape(-1, 3)
  e_dst = dst.euler_angles().reshape(-1, 3)
  return dict(x=x, kernel=kernel,
              w=np.broadcast_to(src.weights[None, :, None], src.shape).reshape(-1),
              R_src=grids.euler_to_matrix(e_src[:, 0], e_src[:, 1], e_src[:, 2]),
              R=grids.euler_to_matrix(e_dst[:, 0], e_dst[:, 1], e_dst[:, 2]),
              xs=x.reshape(batch, -1, c_in), L_out=L_out, N_out=N_out, N_in=N_in,
              out_shape=(batch,) + dst.shape + (c_out,))


def _so3so3_block(s, q, p):
  """reference.so3_to_so3's arithmetic for output rotations q and input rotations p."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, wigner  # pylint: disable=g-import-not-at-top
  L, N_out, N_in = s["L_out"], s["N_out"], s["N_in"]
  rel = np.einsum("qji,pjk->qpik", s["R"][q], s["R_src"][p])
  e = grids.matrix_to_euler(rel)
  D = wigner.wigner_D(L, e[..., 0], e[..., 1], e[..., 2])
  D = D[..., L - N_out:L + N_out - 1, L - N_in:L + N_in - 1]
  c = (2 * np.arange(L) + 1) / (8 * np.pi ** 2)
  psi = np.einsum("qplnk,lnkcd,l->qpcd", np.conj(D), s["kernel"], c)
  return np.einsum("bpc,p,qpcd->bqd", s["xs"][:, p], s["w"][p], np.conj(psi)).real


def _block_shape(num_q: int, num_p: int, bytes_per_pair: float) -> tuple[int, int]:
  """(q, p) block sizes whose largest array stays under BLOCK_BYTES."""
  pairs = max(1, int(BLOCK_BYTES // bytes_per_pair))
  if pairs >= num_p:
    return max(1, min(num_q, pairs // num_p)), num_p
  return 1, pairs


def _direct(kind: str, s, *, full: bool, max_seconds: float = 60.0) -> dict[str, Any]:
  """Blocked direct quadrature: all blocks (``full``) or a few, scaled to the whole layer."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  block_fn = _s2so3_block if kind == "s2so3" else _so3so3_block
  num_q, num_p = len(s["R"]), len(s["w"])
  L = s["L_out"]
  # Largest per-pair array: Y / D as computed (all m, n), complex128.
  per_pair = 16 * L * (2 * L - 1) * (1 if kind == "s2so3" else (2 * L - 1))
  bq, bp = _block_shape(num_q, num_p, per_pair)
  if full:
    t = time.perf_counter()
    out = np.zeros((s["xs"].shape[0], num_q, s["out_shape"][-1]))
    for q0 in range(0, num_q, bq):
      for p0 in range(0, num_p, bp):
        out[:, q0:q0 + bq] += block_fn(s, slice(q0, q0 + bq), slice(p0, p0 + bp))
    return {"seconds": time.perf_counter() - t, "out": out.reshape(s["out_shape"]),
            "block": [bq, bp], "extrapolated": False}
  # Calibrate: grow the block from 16 pairs until one takes ≥ 1 s (or reaches the memory
  # cap), so that the fixed per-block overhead (the Python loop over ℓ, m) is amortised;
  # the first call (caches, imports) is not timed.
  def shape(pairs):
    return (1, pairs) if pairs <= bp else (min(bq, pairs // bp), bp)

  block_fn(s, slice(0, 1), slice(0, min(bp, 4)))
  pairs, cap = min(bp, 16), bq * bp
  while True:
    tq, tp = shape(pairs)
    t = time.perf_counter()
    block_fn(s, slice(0, tq), slice(0, tp))
    took = time.perf_counter() - t
    if took >= 1.0 or pairs >= cap:
      break
    pairs = int(min(cap, pairs * min(max(1.5 / max(took, 1e-4), 2.0), 64.0)))
  times, q0 = [], 0
  start = time.perf_counter()
  while len(times) < 3 and (not times or time.perf_counter() - start < max_seconds):
    t = time.perf_counter()
    block_fn(s, slice(q0, q0 + tq), slice(0, tp))
    times.append(time.perf_counter() - t)
    q0 = (q0 + tq) % num_q
  bq, bp = tq, tp
  pairs_done = min(bq, num_q) * min(bp, num_p)
  scale = num_q * num_p / pairs_done
  return {"seconds": statistics.median(times) * scale, "block": [bq, bp],
          "blocks_timed": len(times), "block_seconds": statistics.median(times),
          "extrapolated": scale > 1, "scale": scale}


def _direct_layer(case: dict[str, Any]) -> dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  L = case["L"]
  t0 = time.perf_counter()
  if case["kind"] == "s2so3":
    s = _s2so3_setup(L, L, N_DIR, 1, S2_CHANNELS, rng)
  else:
    s = _so3so3_setup(L, L, N_DIR, N_DIR, 1, SO3_CHANNELS, rng)
  setup = time.perf_counter() - t0
  r = _direct(case["kind"], s, full=False)
  r.pop("out", None)
  return {"median_s": r.pop("seconds"), "setup_s": setup, **r}


def _direct_check(case: dict[str, Any]) -> dict[str, Any]:
  """reference.py whole vs the blocked evaluation (output and extrapolated time)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import reference  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  res = {}
  for kind in ("s2so3", "so3so3"):
    # reference.so3_to_so3 takes ~40 min at L = 8 on this CPU: its check runs at L ≤ 4.
    L = case["L"] if kind == "s2so3" else min(case["L"], 4)
    if kind == "s2so3":
      s = _s2so3_setup(L, L, N_DIR, 1, S2_CHANNELS, rng)
      t = time.perf_counter()
      ref = reference.s2_to_so3(s["x"], s["kernel"], None, L_out=L, N=N_DIR)
    else:
      s = _so3so3_setup(L, L, N_DIR, N_DIR, 1, SO3_CHANNELS, rng)
      t = time.perf_counter()
      ref = reference.so3_to_so3(s["x"], s["kernel"], None, L_out=L, N_out=N_DIR)
    t_ref = time.perf_counter() - t
    full = _direct(kind, s, full=True)
    part = _direct(kind, s, full=False)
    res[kind] = {"L": L, "reference_s": t_ref, "blocked_full_s": full["seconds"],
                 "blocked_extrapolated_s": part["seconds"], "scale": part["scale"],
                 "max_abs_diff": float(np.max(np.abs(full["out"] - ref))),
                 "max_abs_ref": float(np.max(np.abs(ref)))}
  return res


def _direct_model(case: dict[str, Any]) -> dict[str, Any]:
  """The default model's three correlations by direct quadrature, batch 32, per event."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO_ROOT)
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  config = sweeps.load_config_file(os.path.join(REPO_ROOT, "configs", "kamland.py")).get_config()
  m, d, b = config.model, config.data, config.train.global_batch_size
  rng = np.random.default_rng(0)
  total, parts = 0.0, []
  feats, lims = list(m.features), list(m.band_limits)
  s = _s2so3_setup(d.band_limit, lims[0], m.N, b, (len(d.channels), feats[0]), rng)
  r = _direct("s2so3", s, full=False)
  parts.append({"layer": f"S²→SO(3) L {d.band_limit}→{lims[0]}", "seconds": r["seconds"],
                "extrapolated": r["extrapolated"]})
  total += r["seconds"]
  for i in range(1, len(feats)):
    n_in, n_out = min(m.N, lims[i - 1]), min(m.N, lims[i])
    s = _so3so3_setup(lims[i - 1], lims[i], n_in, n_out, b, (feats[i - 1], feats[i]), rng)
    r = _direct("so3so3", s, full=False)
    parts.append({"layer": f"SO(3)→SO(3) L {lims[i - 1]}→{lims[i]}", "seconds": r["seconds"],
                  "extrapolated": r["extrapolated"]})
    total += r["seconds"]
  return {"median_s": total / b, "batch": b, "parts": parts, "per": "event",
          "note": "the three correlations only (BatchNorm, ReLU, read-out left out)"}


def child(case: dict[str, Any]) -> dict[str, Any]:
  base = _rss_mb()
  fn = {("fast", "layer"): _fast_layer, ("fast", "model"): _fast_model,
        ("direct", "layer"): _direct_layer, ("direct", "model"): _direct_model,
        ("direct", "check"): _direct_check}[(case["impl"], case["what"])]
  out = fn(case)
  out["peak_rss_mb"] = _rss_mb()
  out["rss_after_imports_mb"] = base
  return out


# ----------------------------------------------------------------------------- driver


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  t = time.perf_counter()
  try:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(case)],
                       capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  wall = time.perf_counter() - t
  lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
  if r.returncode != 0 or not lines:
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {r.returncode}: {' | '.join(tail)[:300]}"}
  out = json.loads(lines[-1])
  out["subprocess_wall_s"] = wall
  return out


def _fmt_t(s: float | None) -> str:
  if s is None:
    return "–"
  if s >= 3600:
    return f"{s / 3600:.2f} h"
  if s >= 1:
    return f"{s:.2f} s"
  if s >= 1e-3:
    return f"{s * 1e3:.2f} ms"
  return f"{s * 1e6:.0f} µs"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--L", type=int, nargs="+", default=[16, 32, 64])
  parser.add_argument("--L_check", type=int, default=8,
                      help="band-limit where reference.py runs whole (0: skip the check)")
  parser.add_argument("--no_direct", action="store_true")
  parser.add_argument("--no_model", action="store_true")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
  parser.add_argument("--json", default="", help="also write the raw results here")
  parser.add_argument("--quick", action="store_true", help="skip the model rows")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return 0
  results: dict[str, Any] = {"L": args.L, "L_check": args.L_check, "layers": [], "model": [],
                             "check": None}
  print(f"# bench_spherical: L = {args.L}, N = {N_DIR}, batch 1 (layers), float32 jitted "
        f"fast path vs float64 numpy direct quadrature; {os.cpu_count()} CPU cores; "
        f"load before: {os.getloadavg()}", flush=True)
  try:
    import e3nn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    e3nn = "installed, but its route is not implemented in this script"
  except ImportError:
    e3nn = "not installed (pip list has no e3nn-jax; nothing installed): skipped"
  print(f"e3nn-jax: {e3nn}", flush=True)
  results["e3nn_jax"] = e3nn

  if args.L_check and not args.no_direct:
    print(f"checking the blocked quadrature against reference.py at L = {args.L_check} ...",
          flush=True)
    results["check"] = run_case({"impl": "direct", "what": "check", "L": args.L_check},
                                args.timeout)
    print(json.dumps(results["check"]), flush=True)

  for L in args.L:
    for kind in ("s2so3", "so3so3"):
      row = {"kind": kind, "L": L}
      for mode in ("fwd", "fwdbwd"):
        row[f"fast_{mode}"] = run_case({"impl": "fast", "what": "layer", "kind": kind, "L": L,
                                        "mode": mode}, args.timeout)
        print(f"fast {kind} L={L} {mode}: {json.dumps(row[f'fast_{mode}'])}", flush=True)
      if not args.no_direct:
        row["direct_fwd"] = run_case({"impl": "direct", "what": "layer", "kind": kind, "L": L},
                                     args.timeout)
        print(f"direct {kind} L={L}: {json.dumps(row['direct_fwd'])}", flush=True)
      results["layers"].append(row)
  if not (args.no_model or args.quick):
    for mode in ("fwd", "fwdbwd"):
      results["model"].append({"impl": "fast", "mode": mode, **run_case(
          {"impl": "fast", "what": "model", "mode": mode}, args.timeout)})
      print(json.dumps(results["model"][-1]), flush=True)
    if not args.no_direct:
      results["model"].append({"impl": "direct", "mode": "fwd", **run_case(
          {"impl": "direct", "what": "model"}, args.timeout)})
      print(json.dumps(results["model"][-1]), flush=True)
  results["load_after"] = os.getloadavg()
  print()
  print(tables(results))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return 0


def tables(results: dict[str, Any]) -> str:
  names = {"s2so3": f"S²→SO(3) {S2_CHANNELS[0]}→{S2_CHANNELS[1]} ch",
           "so3so3": f"SO(3)→SO(3) {SO3_CHANNELS[0]}→{SO3_CHANNELS[1]} ch"}
  out = ["| layer (N = 3, batch 1) | L | fast fwd | fast fwd+bwd | fast peak RSS (fwd / "
         "fwd+bwd) | fast setup (kernels + compile) | direct fwd | direct peak RSS | "
         "direct / fast (fwd) | flops: ideal tabulated direct / fast (XLA) |",
         "|---|---|---|---|---|---|---|---|---|---|"]
  for row in results["layers"]:
    ff, fb = row.get("fast_fwd", {}), row.get("fast_fwdbwd", {})
    dr = row.get("direct_fwd")
    err = [r["error"] for r in (ff, fb, dr or {}) if "error" in r]
    direct = "not run" if dr is None else (
        f"error: {dr['error']}" if "error" in dr else
        _fmt_t(dr["median_s"]) + (f" (extrapolated ×{dr['scale']:.3g} from "
                                  f"{dr['blocks_timed']} blocks of {dr['block'][0]}×"
                                  f"{dr['block'][1]} pairs)" if dr.get("extrapolated") else ""))
    ratio = (f"{dr['median_s'] / ff['median_s']:,.0f}×"
             if dr and "median_s" in dr and "median_s" in ff else "–")
    out.append(
        f"| {names[row['kind']]} | {row['L']} | {_fmt_t(ff.get('median_s'))} | "
        f"{_fmt_t(fb.get('median_s'))} | {ff.get('peak_rss_mb', 0):.0f} / "
        f"{fb.get('peak_rss_mb', 0):.0f} MB | {_fmt_t(ff.get('setup_s'))} | {direct} | "
        + ("–" if not dr or "peak_rss_mb" not in dr else f"{dr['peak_rss_mb']:.0f} MB")
        + f" | {ratio} | "
        + (f"{ff['ideal_direct_flops']:.2g} / {ff['flops']:.2g} = "
           f"{ff['ideal_direct_flops'] / ff['flops']:,.0f}×" if ff.get("flops") else "–")
        + " |" + (f" errors: {err}" if err else ""))
  if results["model"]:
    out += ["", "| default spherical classifier (configs/kamland.py) | per event | peak RSS | "
            "note |", "|---|---|---|---|"]
    for r in results["model"]:
      what = {"fwd": "inference (forward)", "fwdbwd": "training step (forward + backward)"}
      label = f"{r['impl']}: {what[r['mode']]}"
      if "error" in r:
        out.append(f"| {label} | error | – | {r['error']} |")
        continue
      note = f"batch {r.get('batch')}"
      if r["impl"] == "direct":
        note += "; " + r["note"] + "; " + ", ".join(
            f"{p['layer']} {_fmt_t(p['seconds'] / r['batch'])}"
            + (" (extrap.)" if p["extrapolated"] else "") for p in r["parts"])
      else:
        note += f"; {r.get('params', 0):,} parameters; setup {_fmt_t(r.get('setup_s'))}"
      out.append(f"| {label} | {_fmt_t(r['median_s'])} | {r['peak_rss_mb']:.0f} MB | {note} |")
    fast = next((r for r in results["model"] if r["impl"] == "fast" and r["mode"] == "fwd"
                 and "median_s" in r), None)
    direct = next((r for r in results["model"] if r["impl"] == "direct" and "median_s" in r),
                  None)
    if fast and direct:
      out.append(f"\nModel inference, direct / fast: {direct['median_s'] / fast['median_s']:,.0f}×")
  chk = results.get("check")
  if chk and "error" not in chk:
    out += ["", "Check: reference.py whole vs the blocked evaluation (same arithmetic) and "
            "its extrapolation from a few ~2 s blocks, as used at larger L:", "",
            "| layer | L | reference.py | blocked, all blocks | blocked, extrapolated | "
            "max |Δ| / max |out| |", "|---|---|---|---|---|---|"]
    for kind, c in chk.items():
      if kind in ("peak_rss_mb", "rss_after_imports_mb", "subprocess_wall_s"):
        continue
      out.append(f"| {names[kind]} | {c['L']} | {_fmt_t(c['reference_s'])} | "
                 f"{_fmt_t(c['blocked_full_s'])} | {_fmt_t(c['blocked_extrapolated_s'])} "
                 f"(×{c['scale']:.3g}) | {c['max_abs_diff'] / c['max_abs_ref']:.1e} |")
  elif chk:
    out.append(f"\nCheck against reference.py: {chk['error']}")
  out.append(f"\ne3nn-jax: {results['e3nn_jax']}")
  return "\n".join(out)


if __name__ == "__main__":
  sys.exit(main())
