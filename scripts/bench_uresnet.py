"""Benchmark: the multi-plane UResNet (SBND, arXiv 2012.01301 Table 1) on CPU (or one GPU).

Measures, batch 1 (``--batch``), for every image size × thread count × dtype:
  forward        ``model.apply(train=False)``, jit-compiled;
  train step     forward + backward + RMSProp update (train-mode BN, running statistics
                 updated, state donated), the paper's "light" weighted cross entropy;
with seconds per step (median after one warm-up call; compilation is timed separately) and
events per second (batch / step time), peak resident memory of the process (ru_maxrss; includes the
compiler and the runtime), achieved GFLOP/s against the analytic forward conv FLOPs
(``uresnet.forward_flops``; a train step is counted as 3× forward: the backward pass
computes two convolutions per forward one) and XLA's own ``cost_analysis`` FLOPs.

Threads: every setting runs in its own subprocess, pinned to the first T CPUs with
``os.sched_setaffinity`` before jax is imported. That is what limits XLA:CPU here
(jax 0.10): its thread pools are sized from the affinity mask, whereas
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (with or without the often-quoted
``intra_op_parallelism_threads=1``) still ran convolutions on two busy threads. The
"busy threads" column checks it in every run: threads of the process that got at least
20 % of the busiest thread's CPU time during the timed steps.

Scaling: a data-parallel train step (``jax.shard_map`` over a ``('data',)`` mesh,
cross-replica BatchNorm via ``bn_axis_name``, loss terms summed with ``psum``) on 1/2/4/8
fake CPU devices (``--xla_force_host_platform_device_count``), fixed global batch; the
loss, the first step's gradient and the parameters after ``--scaling-steps`` steps are
compared with a plain single-device ``jit`` reference. Gradient ratios around 1e-3 are
float32 rounding, not a bug: for the --quick model the float32 gradient itself differs from
a float64 one by 1.5e-3 (4.8e-4 with Flax's two-pass variance, ``use_fast_variance=False``;
measured once with ``jax_enable_x64``). Fake devices share the same cores: the times show
the overhead of splitting, not a speed-up.

Inputs are random sparse images and random labels (dense convolutions cost the same
whatever the content); no detector simulation is involved.

  python scripts/bench_uresnet.py                    # full run: ~20–30 min on 2 cores
  python scripts/bench_uresnet.py --quick            # small model and sizes: ~5 min
  python scripts/bench_uresnet.py --threads all --dtypes float32,bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_MODEL = dict(initial_filters=4, depth=3, deepest_filters=32, deepest_blocks=1)
CLASS_WEIGHTS = (1.0, 1.5, 10.0)  # background, cosmic, neutrino ("light" balance)


# --- worker side -------------------------------------------------------------------------


def _thread_ticks() -> dict[str, int]:
  """CPU clock ticks (user + system) of every thread of this process."""
  ticks = {}
  for tid in os.listdir("/proc/self/task"):
    try:
      with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      ticks[tid] = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
      pass
  return ticks


def _timed(fn, repeats: int, budget_s: float) -> dict[str, float]:
  """First call (warm-up), median of up to ``repeats`` further calls, thread use."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  before, cpu0 = _thread_ticks(), time.process_time()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if sum(times) > budget_s:
      break
  cpu = time.process_time() - cpu0
  after = _thread_ticks()
  used = [after[t] - before.get(t, 0) for t in after]
  busiest = max(used) if used else 0
  return {"first_call_s": first, "step_s": float(np.median(times)), "timed_steps": len(times),
          "cpu_utilisation": cpu / sum(times),
          # None when the timed steps were shorter than the clock tick (10 ms).
          "busy_threads": sum(u >= 0.2 * busiest for u in used) if busiest else None}


def _pixel_weights(labels):
  """Per-pixel class weights [B, P, H, W] (the reference's "light" balance)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(CLASS_WEIGHTS)[labels]


def _weighted_ce_sum(logits, labels):
  """Per-plane Σ w·CE over the (local) batch and pixels: [P]. Loss = Σ_planes (this / Σ w)."""
  import optax  # pylint: disable=g-import-not-at-top
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return (_pixel_weights(labels) * ce).sum((0, 2, 3))


def _inputs(batch: int, height: int, width: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  shape = (batch, 3, height, width)
  images = np.where(rng.random(shape) < 0.02, rng.exponential(20.0, shape), 0.0)
  labels = np.where(images > 0, rng.integers(1, 3, shape), 0)
  return images.astype(np.float32), labels.astype(np.int32)


def _init(model, jax, jnp):
  """``model.init`` on the smallest valid image (parameters do not depend on H, W).

  With an "rbg" key: XLA:CPU compiles threefry-based initialisation of the ~200 leaves
  slowly (≈ 19 CPU-s for the --quick model vs ≈ 4 s with rbg, measured here).
  """
  side = 2 ** model.depth
  x = jnp.zeros((1, 3, side, side), jnp.float32)
  return jax.jit(lambda key: model.init(key, x, train=False))(jax.random.key(0, impl="rbg"))


def _optimizer():
  import optax  # pylint: disable=g-import-not-at-top
  # torch.optim.RMSprop's defaults α = 0.99, ε = 1e-8 (optax puts ε inside the sqrt); lr 3e-4.
  return optax.rmsprop(3e-4, decay=0.99, eps=1e-8)


def _cost(compiled) -> dict[str, float | None]:
  out: dict[str, float | None] = {"xla_flops": None, "xla_temp_bytes": None}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["xla_flops"] = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    out["xla_temp_bytes"] = float(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def worker_single(spec: dict) -> dict:
  """One (size, threads, dtype, mode) measurement in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(spec["dtype"])
  model = uresnet.UResNet(**spec["model"], dtype=dtype)
  height, width = spec["size"]
  images, labels = _inputs(spec["batch"], height, width)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  variables = _init(model, jax, jnp)
  flops = uresnet.forward_flops(model, height, width)["total"] * spec["batch"]

  if spec["mode"] == "forward":
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    t0 = time.perf_counter()
    compiled = fn.lower(variables, images).compile()
    compile_s = time.perf_counter() - t0
    timing = _timed(lambda: compiled(variables, images).block_until_ready(),
                    spec["repeats"], spec["budget_s"])
    analytic = flops
  else:
    opt = _optimizer()

    def step(state, x, y):
      params, batch_stats, opt_state = state

      def loss_fn(p):
        logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
        den = _pixel_weights(y).sum((0, 2, 3))
        return (_weighted_ce_sum(logits, y) / den).sum(), new["batch_stats"]

      (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    state = [(variables["params"], variables["batch_stats"],
              opt.init(variables["params"]))]
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state[0], images, labels).compile()
    compile_s = time.perf_counter() - t0
    losses = []

    def run():
      state[0], loss = compiled(state[0], images, labels)
      losses.append(float(loss))

    timing = _timed(run, spec["repeats"], spec["budget_s"])
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f"non-finite loss in the train step: {losses}")
    analytic = 3 * flops
  out = dict(timing, **_cost(compiled))
  out.update(compile_s=compile_s, analytic_flops=analytic, gflops_per_s=analytic / out["step_s"] / 1e9,
             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
             affinity=len(os.sched_getaffinity(0)))
  return out


def _flat(tree, jax) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def worker_scaling(spec: dict) -> dict:
  """Data-parallel train steps on ``spec['devices']`` devices; writes final params to npz."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from recoil_jax import parallel  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top

  n = spec["devices"]
  if jax.device_count() != n:
    raise RuntimeError(f"expected {n} devices, got {jax.device_count()}")
  height, width = spec["size"]
  images, labels = _inputs(spec["global_batch"], height, width, seed=1)
  opt = _optimizer()
  axis = parallel.DATA_AXIS
  reference = spec.get("reference", False)
  model = uresnet.UResNet(**spec["model"], bn_axis_name=None if reference else axis)
  variables = _init(model, jax, jnp)
  state = (variables["params"], variables["batch_stats"], opt.init(variables["params"]))

  def step(state, x, y):
    params, batch_stats, opt_state = state
    den = _pixel_weights(y).sum((0, 2, 3))  # [P], labels only
    if not reference:
      den = jax.lax.psum(den, axis)

    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
      return (_weighted_ce_sum(logits, y) / den).sum(), new["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if not reference:
      # The loss terms are per device → psum. The gradient is not psum'd: under shard_map
      # (check_vma=True, the default) parameters enter replicated, and the transpose of
      # their implicit broadcast to the devices already sums the cotangents over 'data'.
      # (An extra psum multiplies it by the device count; the ‖grad‖ column shows it.)
      loss = jax.lax.psum(loss, axis)
    updates, opt_state = opt.update(grads, opt_state, params)
    # RMSProp is nearly invariant to a global scale of the gradient: the gradient itself
    # is returned and compared, so that a wrong reduction (a factor n) is visible.
    return (optax.apply_updates(params, updates), new_stats, opt_state), (loss, grads)

  if reference:
    fn = jax.jit(step)
    x, y = jnp.asarray(images), jnp.asarray(labels)
  else:
    mesh = parallel.make_mesh()
    fn = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
                               out_specs=(P(), (P(), P()))))
    state = parallel.replicate(state, mesh)
    x, y = parallel.shard_batch({"x": images, "y": labels}, mesh).values()
  if reference:  # θ_0, to express parameter differences relative to the total update
    np.savez(spec["params_out"].replace(".npz", "_init.npz"), **_flat(state[:2], jax))
  losses, times = [], []
  for i in range(spec["steps"]):
    t0 = time.perf_counter()
    state, (loss, grads) = fn(state, x, y)
    losses.append(float(loss))
    times.append(time.perf_counter() - t0)
    if i == 0:
      np.savez(spec["params_out"].replace(".npz", "_grad1.npz"), **_flat(grads, jax))
  np.savez(spec["params_out"], **_flat(state[:2], jax))
  return {"losses": losses, "first_step_s": times[0],
          "step_s": float(np.median(times[1:])) if len(times) > 1 else None,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- parent side -------------------------------------------------------------------------


def _run_worker(spec: dict, env_extra: dict[str, str], timeout_s: float) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra)
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout_s:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  why = "killed by the OS (out of memory?)" if proc.returncode in (-9, 137) else " | ".join(tail)
  return {"error": f"exit {proc.returncode}: {why}"}


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 640x1024") from e
  return h, w


def _l2_ratio(got: dict, ref: dict, origin: dict | None = None) -> float:
  """‖got − ref‖₂ / ‖ref − origin‖₂ over all arrays (origin = 0 if None)."""
  if set(got) != set(ref):
    raise ValueError(f"different trees: {sorted(set(got) ^ set(ref))[:5]}")
  num = sum(((got[k] - ref[k]) ** 2).sum() for k in ref)
  den = sum(((ref[k] - (0 if origin is None else origin[k])) ** 2).sum() for k in ref)
  return float(np.sqrt(num / den))


def _fmt(value, spec: str = ".3g", scale: float = 1.0) -> str:
  if value is None:
    return "—"
  return format(value * scale if scale != 1.0 else value, spec)


def _machine() -> dict:
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
          "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true",
                 help=f"small model {QUICK_MODEL}, sizes 32x64 and 64x128, 1 repeat, 1–2 devices")
  p.add_argument("--sizes", type=lambda s: [_size(v) for v in s.split(",")],
                 default=[(640, 1024), (128, 256)], help="per-plane HxW list")
  p.add_argument("--threads", default="1,2",
                 help="comma list of CPU counts, or 'all' (no pinning; use on a GPU)")
  p.add_argument("--dtypes", default="float32", help="comma list, e.g. float32,bfloat16")
  p.add_argument("--modes", default="forward,train")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--budget-s", type=float, default=120.0,
                 help="stop timing a setting after this many seconds (≥ 1 timed step)")
  p.add_argument("--model", type=json.loads, default={},
                 help='UResNet overrides as JSON, e.g. \'{"initial_filters": 16}\'')
  p.add_argument("--devices", default="1,2,4,8", help="fake CPU device counts ('' = skip)")
  p.add_argument("--scaling-size", type=_size, default=(64, 128))
  p.add_argument("--scaling-batch", type=int, default=8)
  p.add_argument("--scaling-steps", type=int, default=3)
  p.add_argument("--timeout-s", type=float, default=3600.0, help="per subprocess")
  p.add_argument("--out", default=None, help="also write the results as JSON here")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  args = p.parse_args()

  if args.worker:
    spec = json.loads(args.worker)
    if spec.get("threads") not in (None, "all"):
      cpus = sorted(os.sched_getaffinity(0))
      if spec["threads"] > len(cpus):
        raise SystemExit(f"--threads {spec['threads']}: only {len(cpus)} CPUs available")
      os.sched_setaffinity(0, cpus[:spec["threads"]])  # before jax creates its thread pools
    result = worker_scaling(spec) if spec["kind"] == "scaling" else worker_single(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return

  model = dict(args.model)
  if args.quick:  # smaller defaults; options given explicitly are kept
    model = {**QUICK_MODEL, **model}
    for name, value in (("sizes", [(64, 128), (32, 64)]), ("repeats", 1), ("scaling_steps", 2),
                        ("scaling_size", (32, 64)), ("scaling_batch", 4), ("devices", "1,2")):
      if getattr(args, name) == p.get_default(name):
        setattr(args, name, value)
  threads = [t if t == "all" else int(t) for t in args.threads.split(",")]
  dtypes = args.dtypes.split(",")
  modes = args.modes.split(",")
  for mode in modes:
    if mode not in ("forward", "train"):
      raise SystemExit(f"--modes: unknown mode {mode!r} (forward, train)")

  from recoil_jax import io  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top
  report = {"machine": _machine(), "model": model, "batch": args.batch, "single": [],
            "scaling": []}
  print(f"# UResNet benchmark — {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, "
        f"load average at start {report['machine']['load_average_at_start']}")
  print(f"model overrides: {model or 'none (paper configuration, Table 1)'}; batch {args.batch}; "
        "inputs: random sparse images (timing does not depend on content)\n")

  print("| size (3×H×W) | CPUs | dtype | mode | s/step | events/s | compile s | peak RSS GB | "
        "XLA temp GB | GFLOP/step analytic | GFLOP/step XLA | GFLOP/s | busy threads | "
        "CPU use |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for height, width in args.sizes:
    analytic = uresnet.forward_flops(uresnet.UResNet(**model), height, width)["total"]
    for t in threads:
      for dtype in dtypes:
        for mode in modes:
          spec = {"kind": "single", "size": (height, width), "threads": t, "dtype": dtype,
                  "mode": mode, "batch": args.batch, "repeats": args.repeats,
                  "budget_s": args.budget_s, "model": model}
          r = _run_worker(spec, {}, args.timeout_s)
          report["single"].append({"spec": spec, "result": r})
          head = f"| 3×{height}×{width} | {t} | {dtype} | {mode} |"
          if "error" in r:
            print(f"{head} {r['error']} | | | | | {analytic * args.batch / 1e9:.4g} | | | | |",
                  flush=True)
            continue
          print(f"{head} {r['step_s']:.3g} | {args.batch / r['step_s']:.3g} | "
                f"{r['compile_s']:.3g} | "
                f"{r['peak_rss_mb'] / 1024:.2f} | {_fmt(r['xla_temp_bytes'], '.2f', 2**-30)} | "
                f"{r['analytic_flops'] / 1e9:.4g} | "
                f"{_fmt(r['xla_flops'], '.4g', 1e-9)} | {r['gflops_per_s']:.3g} | "
                f"{_fmt(r['busy_threads'], 'd')} | {r['cpu_utilisation']:.2f} |", flush=True)
  print("\nCPUs: the affinity mask of the worker ('all' = not pinned). CPU use: process CPU "
        "seconds / wall seconds of the timed steps (≤ CPUs; lower when the machine is shared). "
        "Busy threads: threads with ≥ 20 % of the busiest thread's CPU time (on one CPU the "
        "dispatching thread and a compute thread alternate, so 2 can show). XLA temp: the "
        "compiled program's scratch memory. "
        "GFLOP/step analytic: convolutions only, 2·MAC (forward; train = 3× forward). "
        f"Paper configuration at 3×640×1024: "
        f"{uresnet.forward_flops(uresnet.UResNet(), 640, 1024)['total'] / 1e9:.2f} GFLOP "
        f"(with a 5×5 first conv: {uresnet.PAPER_FORWARD_GFLOP}, computed; arXiv 2012.01301 "
        "prints no FLOP count).")

  devices = [int(d) for d in args.devices.split(",") if d]
  if devices:
    height, width = args.scaling_size
    print(f"\n## Data parallel on fake CPU devices: global batch {args.scaling_batch}, "
          f"3×{height}×{width}, {args.scaling_steps} RMSProp steps, cross-replica BN\n")
    print("| devices | batch / device | loss step 1 | loss last step | ‖g − g_ref‖ / ‖g_ref‖ "
          "step 1 | ‖θ − θ_ref‖ / ‖θ_ref − θ_0‖ | s/step (after the first) | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_uresnet_") as tmp:
      base = {"kind": "scaling", "size": (height, width), "global_batch": args.scaling_batch,
              "steps": args.scaling_steps, "model": model}
      ref_path = os.path.join(tmp, "reference.npz")
      ref = _run_worker(dict(base, devices=1, reference=True, params_out=ref_path), {},
                        args.timeout_s)
      report["scaling"].append({"devices": "1 (plain jit reference)", "result": ref})
      if "error" in ref:
        print(f"| reference | {ref['error']} | | | | | | |")
        devices = []
      else:
        print(f"| 1 (plain jit) | {args.scaling_batch} | {ref['losses'][0]:.6g} | "
              f"{ref['losses'][-1]:.6g} | 0 | 0 | "
              f"{_fmt(ref['step_s'])} | "
              f"{ref['peak_rss_mb'] / 1024:.2f} |", flush=True)
        reference = dict(np.load(ref_path))
        initial = dict(np.load(ref_path.replace(".npz", "_init.npz")))
        ref_grad = dict(np.load(ref_path.replace(".npz", "_grad1.npz")))
      for n in devices:
        if args.scaling_batch % n:
          print(f"| {n} | global batch {args.scaling_batch} not divisible | | | | | | |")
          continue
        path = os.path.join(tmp, f"devices_{n}.npz")
        r = _run_worker(dict(base, devices=n, params_out=path),
                        {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
                         "JAX_PLATFORMS": "cpu"}, args.timeout_s)
        report["scaling"].append({"devices": n, "result": r})
        if "error" in r:
          print(f"| {n} | {r['error']} | | | | | | |", flush=True)
          continue
        grad = _l2_ratio(dict(np.load(path.replace(".npz", "_grad1.npz"))), ref_grad)
        params = _l2_ratio(dict(np.load(path)), reference, initial)
        r.update(grad_rel_diff=grad, param_diff_over_update=params)
        print(f"| {n} | {args.scaling_batch // n} | {r['losses'][0]:.6g} | "
              f"{r['losses'][-1]:.6g} | {grad:.1e} | {params:.1e} | "
              f"{_fmt(r['step_s'])} | "
              f"{r['peak_rss_mb'] / 1024:.2f} |", flush=True)
    print("\ng: the gradient of the first step (exactness of the data-parallel step). θ: "
          "parameters and BN statistics after the last step; θ_ref: plain jit on one device; "
          "θ_0: initial. RMSProp's first steps are nearly sign(g)·10·lr, so parameters whose "
          "gradients are at rounding level flip sign and the θ ratio is much larger than the "
          "gradient one. Fake devices share the machine's cores: the times are the cost of "
          "splitting, not a speed-up.")
  if args.out:
    io.write_text_atomic(args.out, json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
