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

Peer (``--peers torch``, the default when torch is importable): the PyTorch UResNet of
CosmicTagger (``coreyjadams/CosmicTagger``, src/networks/torch/uresnet2D.py), the reference
code of the paper, timed per setting on the same inputs, CPUs, loss and optimiser, in its own
subprocess pinned like recoil_jax's, with ``torch.set_num_threads(T)`` and
``set_num_interop_threads(1)``; forward in eval mode under ``inference_mode``, train step in
train mode (``torch.optim.RMSprop(lr=3e-4, alpha=0.99, eps=1e-8)``, the weighted cross entropy
of ``_weighted_ce_sum``), eager, float32 settings only (on CUDA when the recoil_jax run of the
setting was on a GPU; that path is untested here). The table adds its s/step, peak RSS
and the ratio recoil_jax / torch (< 1: recoil_jax faster); ``--rounds N`` alternates the two
(recoil_jax, torch, recoil_jax, …) so that load changes hit both, and reports medians.
The torch module (``torch_uresnet``) is written here from that file's structure (one
plane network called on each plane in turn, i.e. shared weights and per-plane batch
statistics; planes concatenated on channels at the deepest level; bilinear ×2 + 1×1 Block
upsampling; ResidualBlock = Block + Conv/BN + sum + LeakyReLU), not copied, and configured as
recoil_jax's UResNet defaults, i.e. Table 1: 8 initial filters doubling per level, depth 6,
7×7 first conv, 2 residual blocks (3×3) per level, deepest Block 1×1 → 256, 5 residual blocks
5×5, Block 1×1 back; skips (the down blocks' output) summed before the up blocks, as in
recoil_jax and the paper's text (torch master adds the level's input instead; same cost); no
final blocks; plain 1×1 conv to 3 classes; conv bias, BN, LeakyReLU(0.01). Its parameter
count is checked against recoil_jax's in every run (23,839,923 for Table 1), and
tests/test_bench_uresnet_peer.py loads the Flax weights into it and gets the same logits and
loss. Table 1's configuration, because it is the network recoil_jax implements (the paper's
Table 1): CosmicTagger's own defaults (16 filters, additive growth, depth 7, concatenated
skips, 5 final blocks; ``cosmictagger_parameters()`` = 19,350,691 parameters, 18,367,891 at
depth 6) are a different network and are not benchmarked.

Inputs are random sparse images and random labels (dense convolutions cost the same
whatever the content); no detector simulation is involved.

  python scripts/bench_uresnet.py                    # full run: ~20–30 min + the peer's
  python scripts/bench_uresnet.py --quick            # small model and sizes: ~5 min
  python scripts/bench_uresnet.py --sizes 128x256 --threads 1 --devices ''   # + torch peer
  python scripts/bench_uresnet.py --threads all --dtypes float32,bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
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
# ``--malloc keep``: glibc keeps the memory a step frees. One arena (XLA's worker threads
# otherwise get their own, which take large blocks from mmap and hand them back on free), no
# mmap, no trimming: the next step reuses pages already mapped instead of faulting in fresh,
# zeroed ones (scratch of the 3×640×1024 train step: 4.7 GB).
KEEP_FREED_MEMORY = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                     "glibc.malloc.trim_threshold=1000000000000000")
# ``--malloc hugepages``: glibc (>= 2.35) advises transparent huge pages on the memory it maps,
# so fresh scratch is faulted in 2 MiB pages instead of 4 KiB ones (needs THP "madvise" or
# "always" in /sys/kernel/mm/transparent_hugepage/enabled).
HUGE_PAGES = "glibc.malloc.hugetlb=1"
# ``--malloc jemalloc`` / ``tcmalloc``: another allocator preloaded into both workers (Debian's
# libjemalloc2 / libtcmalloc-minimal4), each with its defaults except tcmalloc's release rate.
# (jemalloc returns dirty pages to the kernel after ``dirty_decay_ms``, 10 s by default.)
MALLOC_ENVS = {
    "default": {},
    "keep": {"GLIBC_TUNABLES": KEEP_FREED_MEMORY},
    "hugepages": {"GLIBC_TUNABLES": HUGE_PAGES},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2"},
    # Release rate 0: tcmalloc never hands freed pages back to the kernel (its default returns
    # them gradually, and a step then faults part of its scratch in again).
    "tcmalloc": {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "TCMALLOC_RELEASE_RATE": "0"},
}


def _malloc_env(name: str) -> dict[str, str]:
  """The environment of ``--malloc name``; a clear error when a preloaded library is missing."""
  env = dict(MALLOC_ENVS[name])
  lib = env.get("LD_PRELOAD")
  if lib:
    import ctypes.util  # pylint: disable=g-import-not-at-top
    if ctypes.util.find_library(lib.split(".so")[0].removeprefix("lib")) is None:
      raise SystemExit(f"--malloc {name}: {lib} is not installed (Debian/Ubuntu: "
                       f"{'libjemalloc2' if 'jemalloc' in lib else 'libtcmalloc-minimal4'})")
  return env


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
  usage0 = resource.getrusage(resource.RUSAGE_SELF)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if sum(times) > budget_s:
      break
  cpu = time.process_time() - cpu0
  usage1 = resource.getrusage(resource.RUSAGE_SELF)
  after = _thread_ticks()
  used = [after[t] - before.get(t, 0) for t in after]
  busiest = max(used) if used else 0
  return {"first_call_s": first, "step_s": float(np.median(times)), "timed_steps": len(times),
          "cpu_utilisation": cpu / sum(times),
          # Fresh memory: XLA:CPU allocates its scratch per execution (--malloc).
          "minor_faults_per_step": (usage1.ru_minflt - usage0.ru_minflt) / len(times),
          "system_s_per_step": (usage1.ru_stime - usage0.ru_stime) / len(times),
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


def train_step(model, opt):
  """(params, batch_stats, opt_state), images, labels → (new state, loss): the benchmarked
  step (light-weighted cross entropy summed over planes, then ``opt``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

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

  return step


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
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(spec["dtype"])
  model = uresnet.UResNet(**spec["model"], dtype=dtype)
  height, width = spec["size"]
  images, labels = _inputs(spec["batch"], height, width)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  variables = _init(model, jax, jnp)
  flops = uresnet.forward_flops(model, height, width)["total"] * spec["batch"]
  # Before the train step donates the parameters: the count the torch peer must match.
  parameters = int(sum(x.size for x in jax.tree.leaves(variables["params"])))
  output_shape = list(jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                                     variables, images).shape)

  per_call = spec.get("steps_per_call", 1)  # train steps per compiled call (train mode only)
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

    step = train_step(model, opt)
    state = [(variables["params"], variables["batch_stats"],
              opt.init(variables["params"]))]
    if per_call > 1:  # several steps in one executable: its scratch is allocated once per call
      images = jnp.stack([images] * per_call)
      labels = jnp.stack([labels] * per_call)
      one_step = step

      def step(state, xs, ys):  # pylint: disable=function-redefined
        # Unrolled: inside an XLA:CPU while loop the same step ran ~4x slower (BENCHMARKS.md).
        state, losses = jax.lax.scan(lambda s, xy: one_step(s, *xy), state, (xs, ys),
                                     unroll=True)
        return state, losses[-1]
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state[0], images, labels).compile()
    compile_s = time.perf_counter() - t0
    losses = []

    def run():
      state[0], loss = compiled(state[0], images, labels)
      losses.append(float(loss))

    timing = _timed(run, spec["repeats"], spec["budget_s"])
    for key in ("step_s", "first_call_s", "minor_faults_per_step", "system_s_per_step"):
      timing[key] /= per_call
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f"non-finite loss in the train step: {losses}")
    analytic = 3 * flops
  out = dict(timing, **_cost(compiled))
  if out["xla_flops"] is not None:
    out["xla_flops"] /= per_call  # per step, like the times (the scratch bytes stay per call)
  out.update(compile_s=compile_s, analytic_flops=analytic, gflops_per_s=analytic / out["step_s"] / 1e9,
             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
             affinity=len(os.sched_getaffinity(0)),
             parameters=parameters, output_shape=output_shape)
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


# --- the PyTorch peer ----------------------------------------------------------------------
# The multi-plane UResNet of coreyjadams/CosmicTagger (src/networks/torch/uresnet2D.py),
# written here from that file's structure, in the configuration of recoil_jax's UResNet
# defaults (Table 1). Module names mirror the Flax parameter paths, so that a Flax
# parameter "encoder/down_0/blocks/res_1/block_0/conv/kernel" is the state_dict entry
# "encoder.down_0.blocks.res_1.block_0.conv.weight" (tests/test_bench_uresnet_peer.py loads
# the Flax weights into it and compares outputs).

# recoil_jax.studies.sbnd.model.UResNet's architectural defaults (Table 1; kept equal by
# tests/test_bench_uresnet_peer.py). Repeated here so that the torch worker never imports jax
# (which would add its runtime to the peer's peak RSS).
TORCH_PEER_DEFAULTS = dict(num_classes=3, initial_filters=8, depth=6, first_kernel=7,
                           blocks_per_level=2, deepest_filters=256, deepest_blocks=5,
                           deepest_kernel=5, connections="sum", upsampling="interpolation",
                           residual=True, cross_plane=True, leaky_slope=0.01, bn_momentum=0.9,
                           bn_epsilon=1e-5)


COMPUTATION_ONLY_FIELDS = ("small_map_convs", "fused_batch_norm")


def _torch_config(overrides: dict) -> dict:
  """``--model`` overrides → the torch peer's configuration (ValueError if it has no peer)."""
  # These change how recoil_jax computes, not what: the peer has nothing to match.
  overrides = {k: v for k, v in overrides.items() if k not in COMPUTATION_ONLY_FIELDS}
  unknown = sorted(set(overrides) - set(TORCH_PEER_DEFAULTS))
  if unknown:
    raise ValueError(f"the torch peer does not implement the UResNet field(s) {unknown}")
  cfg = {**TORCH_PEER_DEFAULTS, **overrides}
  if cfg["connections"] not in ("sum", "concat"):
    raise ValueError(f"connections={cfg['connections']!r}")
  if cfg["upsampling"] not in ("interpolation", "convolutional"):
    raise ValueError(f"upsampling={cfg['upsampling']!r}")
  return cfg


def torch_uresnet(planes: int = 3, **overrides):
  """The torch peer: one plane network called on each plane in turn. [B, P, H, W] → logits
  [B, P, classes, H, W] (recoil_jax: [B, P, H, W, classes]; same numbers, channels first).

  Same semantics as ``recoil_jax.studies.sbnd.model.UResNet`` (its docstring), so the two
  compute the same function given the same weights: Block = Conv(k×k, same, bias) → BN →
  LeakyReLU; residual block = Block → Conv + BN → + input → LeakyReLU; per level 2 residual
  blocks (3×3) → skip, MaxPool 2×2 → Block(1×1, F → 2F); deepest: planes concatenated on
  channels → Block(1×1 → 256) → 5 residual blocks (5×5) → Block(1×1 → P·F) → split; up:
  bilinear ×2 → Block(1×1, 2F → F) → + skip → 2 residual blocks; final plain Conv(1×1) with
  bias. BatchNorm momentum 1 − Flax's. Xavier-uniform conv weights, zero biases.
  Calling the shared module once per plane gives per-plane batch statistics in train mode
  (as recoil_jax); the running averages are then updated once per plane in turn (recoil_jax
  keeps one set per plane), which changes nothing in the timed work.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

  cfg = _torch_config(overrides)

  def act(x):
    return F.leaky_relu(x, cfg["leaky_slope"])

  def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=cfg["bn_epsilon"], momentum=1.0 - cfg["bn_momentum"])

  class Block(nn.Module):
    def __init__(self, c_in, c_out, kernel, activate=True):
      super().__init__()
      self.conv = nn.Conv2d(c_in, c_out, kernel, padding="same", bias=True)
      self.bn = batch_norm(c_out)
      self.activate = activate

    def forward(self, x):
      y = self.bn(self.conv(x))
      return act(y) if self.activate else y

  class Residual(nn.Module):
    def __init__(self, channels, kernel):
      super().__init__()
      self.block_0 = Block(channels, channels, kernel)
      self.block_1 = Block(channels, channels, kernel, activate=False)

    def forward(self, x):
      return act(self.block_1(self.block_0(x)) + x)

  def series(channels, kernel, count):
    if cfg["residual"]:
      layers = [(f"res_{i}", Residual(channels, kernel)) for i in range(count)]
    else:  # the reference's non-residual BlockSeries: one plain Block per block
      layers = [(f"plain_{i}", Block(channels, channels, kernel)) for i in range(count)]
    return nn.Sequential(collections.OrderedDict(layers))

  class Down(nn.Module):
    def __init__(self, channels):
      super().__init__()
      self.blocks = series(channels, 3, cfg["blocks_per_level"])
      self.bottleneck = Block(channels, 2 * channels, 1)

    def forward(self, x):
      skip = self.blocks(x)
      return skip, self.bottleneck(F.max_pool2d(skip, 2))

  class Up(nn.Module):
    def __init__(self, channels):
      super().__init__()
      if cfg["upsampling"] == "interpolation":
        self.bottleneck = Block(2 * channels, channels, 1)
      else:
        self.upconv = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2, bias=True)
        self.upconv_bn = batch_norm(channels)
      if cfg["connections"] == "concat":
        self.connection = Block(2 * channels, channels, 1)
      self.blocks = series(channels, 3, cfg["blocks_per_level"])

    def forward(self, x, skip):
      if cfg["upsampling"] == "interpolation":
        x = self.bottleneck(F.interpolate(x, scale_factor=2, mode="bilinear",
                                          align_corners=False))
      else:
        x = act(self.upconv_bn(self.upconv(x)))
      x = x + skip if cfg["connections"] == "sum" else self.connection(torch.cat([x, skip], 1))
      return self.blocks(x)

  class Deepest(nn.Module):
    def __init__(self, channels):
      super().__init__()
      self.bottleneck_in = Block(channels, cfg["deepest_filters"], 1)
      self.blocks = series(cfg["deepest_filters"], cfg["deepest_kernel"], cfg["deepest_blocks"])
      self.bottleneck_out = Block(cfg["deepest_filters"], channels, 1)

    def forward(self, x):
      return self.bottleneck_out(self.blocks(self.bottleneck_in(x)))

  class Encoder(nn.Module):  # one plane [B, 1, H, W] → skips, bottom
    def __init__(self):
      super().__init__()
      f = cfg["initial_filters"]
      self.initial = Block(1, f, cfg["first_kernel"])
      for i in range(cfg["depth"]):
        self.add_module(f"down_{i}", Down(f << i))

    def forward(self, x):
      x, skips = self.initial(x), []
      for i in range(cfg["depth"]):
        skip, x = getattr(self, f"down_{i}")(x)
        skips.append(skip)
      return skips, x

  class Decoder(nn.Module):  # one plane: bottom, skips → logits [B, classes, H, W]
    def __init__(self):
      super().__init__()
      f = cfg["initial_filters"]
      for i in range(cfg["depth"]):
        self.add_module(f"up_{i}", Up(f << i))
      self.final = nn.Conv2d(f, cfg["num_classes"], 1, bias=True)

    def forward(self, x, skips):
      for i in reversed(range(cfg["depth"])):
        x = getattr(self, f"up_{i}")(x, skips[i])
      return self.final(x)

  class UResNet(nn.Module):
    def __init__(self):
      super().__init__()
      bottom = cfg["initial_filters"] << cfg["depth"]
      self.encoder = Encoder()
      self.deepest = Deepest(planes * bottom if cfg["cross_plane"] else bottom)
      self.decoder = Decoder()
      for m in self.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
          nn.init.xavier_uniform_(m.weight)
          nn.init.zeros_(m.bias)

    def forward(self, images):
      if images.shape[1] != planes:
        raise ValueError(f"expected {planes} planes, got images of shape {tuple(images.shape)}")
      encoded = [self.encoder(images[:, p:p + 1]) for p in range(planes)]
      bottoms = [bottom for _, bottom in encoded]
      if cfg["cross_plane"]:  # channels plane-major, as recoil_jax's reshape
        bottoms = torch.chunk(self.deepest(torch.cat(bottoms, 1)), planes, 1)
      else:
        bottoms = [self.deepest(b) for b in bottoms]
      return torch.stack([self.decoder(b, skips) for b, (skips, _) in zip(bottoms, encoded)], 1)

  return UResNet()


def _torch_weighted_loss(logits, labels, weights):
  """``_weighted_ce_sum`` / ``_pixel_weights`` in torch: Σ_planes Σ w·CE / Σ w.

  logits [B, P, C, H, W], labels int64 [B, P, H, W], weights [C] (``CLASS_WEIGHTS``).
  """
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  b, p, c, h, w = logits.shape
  ce = F.cross_entropy(logits.reshape(b * p, c, h, w), labels.reshape(b * p, h, w),
                       reduction="none").reshape(b, p, h, w)
  pixel_weights = weights[labels]
  return ((pixel_weights * ce).sum((0, 2, 3)) / pixel_weights.sum((0, 2, 3))).sum()


def worker_torch(spec: dict) -> dict:
  """The torch peer's (size, threads, mode) measurement; float32, same inputs as the jax side."""
  import torch  # pylint: disable=g-import-not-at-top  (after the affinity is pinned)
  if spec.get("threads") not in (None, "all"):
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
  device = torch.device(spec.get("device", "cpu"))
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
  torch.manual_seed(0)
  net = torch_uresnet(**spec["model"]).to(device)
  height, width = spec["size"]
  images, labels = _inputs(spec["batch"], height, width)  # the jax worker's arrays
  x = torch.from_numpy(images).to(device)
  y = torch.from_numpy(labels).long().to(device)
  shape = []

  if spec["mode"] == "forward":
    net.eval()

    def run():
      out = net(x)
      sync()
      shape[:] = out.shape

    with torch.inference_mode():
      timing = _timed(run, spec["repeats"], spec["budget_s"])
  else:
    net.train()
    weights = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32, device=device)
    opt = torch.optim.RMSprop(net.parameters(), lr=3e-4, alpha=0.99, eps=1e-8)  # ≡ _optimizer
    losses = []

    def run():
      opt.zero_grad(set_to_none=True)
      logits = net(x)
      loss = _torch_weighted_loss(logits, y, weights)
      loss.backward()
      opt.step()
      losses.append(float(loss))  # synchronises, as the jax side's float(loss)
      shape[:] = logits.shape

    timing = _timed(run, spec["repeats"], spec["budget_s"])
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f"non-finite loss in the torch train step: {losses}")
  return dict(timing, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              parameters=sum(p.numel() for p in net.parameters()), output_shape=list(shape),
              torch=torch.__version__, device=str(device), threads=torch.get_num_threads(),
              interop_threads=torch.get_num_interop_threads(),
              affinity=len(os.sched_getaffinity(0)))


def cosmictagger_parameters(initial_filters: int = 16, depth: int = 7, growth: str = "additive",
                            connections: str = "concat", blocks_final: int = 5,
                            batch_norm: bool = False, first_kernel: int = 5,
                            blocks_per_level: int = 2, deepest_filters: int = 256,
                            deepest_blocks: int = 5, deepest_kernel: int = 5,
                            residual: bool = True, planes: int = 3, classes: int = 3) -> int:
  """Parameters of the CosmicTagger torch UResNet (uresnet2D.py) for a configuration, counted.

  Defaults: CosmicTagger's own (src/config/network.py: 16 filters, additive growth, depth 7,
  concatenated skips, 5 final blocks, 5×5 first conv, no normalisation for "uresnet").
  Reproduces the file's documented count for its A21 configuration (8,510,547; tested) and,
  for Table 1's configuration, recoil_jax's 23,839,923.
  """
  def block(c_in, c_out, k):
    return k * k * c_in * c_out + c_out + (2 * c_out if batch_norm else 0)

  def blocks(channels, k, count):
    return count * (2 if residual else 1) * block(channels, channels, k)

  total, channels = block(1, initial_filters, first_kernel), initial_filters
  for _ in range(depth):
    nxt = channels + initial_filters if growth == "additive" else 2 * channels
    total += 2 * blocks(channels, 3, blocks_per_level) + block(channels, nxt, 1)
    total += block(nxt, channels, 1)  # interpolation upsampling's 1×1 Block
    if connections == "concat":
      total += block(2 * channels, channels, 1)
    channels = nxt
  total += block(planes * channels, deepest_filters, 1)
  total += blocks(deepest_filters, deepest_kernel, deepest_blocks)
  total += block(deepest_filters, planes * channels, 1)
  return total + blocks(initial_filters, 3, blocks_final) + initial_filters * classes + classes


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


def _combine(runs: list[dict]) -> dict:
  """One implementation's rounds of a setting → one result: median s/step over the rounds,
  the largest peak RSS; the other fields from the first successful round."""
  ok = [r for r in runs if "error" not in r]
  if not ok:
    return runs[0] if runs else {"error": "not run"}
  out = dict(ok[0])
  steps = [r["step_s"] for r in ok]
  out.update(step_s=float(np.median(steps)), step_s_rounds=steps, rounds=len(ok),
             peak_rss_mb=max(r["peak_rss_mb"] for r in ok))
  if len(ok) < len(runs):
    out["round_errors"] = [r["error"] for r in runs if "error" in r]
  if out.get("analytic_flops"):
    out["gflops_per_s"] = out["analytic_flops"] / out["step_s"] / 1e9
  return out


def _resolve_peers(choice: str, model: dict) -> tuple[list[str], str | None]:
  """``--peers`` → (peers to run, a note to print or None)."""
  if choice == "none":
    return [], None
  if importlib.util.find_spec("torch") is None:
    if choice == "torch":
      raise SystemExit("--peers torch: torch is not importable (pip install -e '.[peers]')")
    return [], "torch is not importable (pip install -e '.[peers]'): no peer is measured"
  try:
    _torch_config(model)
  except ValueError as e:
    if choice == "torch":
      raise SystemExit(f"--peers torch with --model {model}: {e}") from e
    return [], f"no torch peer for --model {model}: {e}"
  return ["torch"], None


def _print_peer_check(report: dict, rounds: int) -> None:
  """Footnote of the peer columns; parameter counts and output shapes of both, compared."""
  print("torch s/step and peak RSS: the same setting (inputs, CPUs, loss, RMSProp) in a torch "
        "subprocess pinned like recoil_jax's, torch.set_num_threads(CPUs), "
        "set_num_interop_threads(1); forward in eval mode under inference_mode, train step in "
        "train mode. recoil_jax / torch: ratio of the s/step medians; < 1 means recoil_jax is "
        f"faster. s/step: median over {rounds} round(s) of each one's median; peak RSS: the "
        "largest; other recoil_jax columns: first round. Both peak RSS include the runtime "
        "(recoil_jax's also the XLA compiler).")
  jax_params = {e["result"].get("parameters") for e in report["single"]} - {None}
  peer_params = {e.get("peers", {}).get("torch", {}).get("parameters")
                 for e in report["single"]} - {None}
  agree = len(jax_params) == 1 and jax_params == peer_params
  report["parameters"] = {"recoil_jax": sorted(jax_params), "torch": sorted(peer_params),
                          "agree": agree,
                          "cosmictagger_defaults": cosmictagger_parameters()}
  print(f"Parameters: recoil_jax {', '.join(f'{n:,}' for n in sorted(jax_params)) or '—'} "
        f"(Σ size of jax.tree.leaves(params)); torch peer "
        f"{', '.join(f'{n:,}' for n in sorted(peer_params)) or '—'} (Σ numel of parameters()): "
        f"{'agree' if agree else 'DIFFER (or missing)'}. CosmicTagger's own defaults (16 filters, "
        "additive growth, depth 7, concatenated skips, 5 final blocks, no BN) would have "
        f"{cosmictagger_parameters():,}; not what is benchmarked.")
  shapes = {}
  for e in report["single"]:
    jax_shape = e["result"].get("output_shape")
    peer_shape = e.get("peers", {}).get("torch", {}).get("output_shape")
    if jax_shape and peer_shape:
      b, p, c, h, w = peer_shape
      shapes[tuple(e["spec"]["size"])] = (jax_shape, peer_shape, jax_shape == [b, p, h, w, c])
  for (height, width), (jax_shape, peer_shape, same) in shapes.items():
    print(f"Output at {height}×{width}: recoil_jax [B, P, H, W, classes] = {jax_shape}; torch "
          f"[B, P, classes, H, W] = {peer_shape}: {'equivalent' if same else 'DIFFERENT'}.")
  report["output_shapes_agree"] = all(same for *_, same in shapes.values()) if shapes else None


def _machine() -> dict:
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "vector_extensions": vector_extensions(),
          "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
          "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def vector_extensions() -> list[str]:
  """The CPU's SIMD extensions that matter to XLA's and PyTorch's kernels (AVX-512 or AVX2
  only changes their ratio: the same VM type ran either on different days)."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next(l for l in f if l.startswith("flags")).split()
  except (OSError, StopIteration):
    return []
  return [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if x in flags]


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
  p.add_argument("--peers", choices=("auto", "torch", "none"), default="auto",
                 help="peer implementation timed on the same inputs: 'torch' (the CosmicTagger "
                 "UResNet in PyTorch, float32 settings only), 'none', or 'auto' (torch if "
                 "importable)")
  p.add_argument("--rounds", type=int, default=1,
                 help="subprocesses per implementation and setting, alternating recoil_jax, "
                 "peer, recoil_jax, …; s/step is the median over the rounds")
  p.add_argument("--malloc", choices=tuple(MALLOC_ENVS), default="default",
                 help="keep: every worker (recoil_jax and the peer) runs with GLIBC_TUNABLES "
                 "that keep freed memory in the process, so a step does not page in fresh "
                 "scratch memory (BENCHMARKS.md: faster steps, but fragmentation can double "
                 "the peak memory); hugepages: glibc advises huge pages; jemalloc / tcmalloc: "
                 "that allocator preloaded into every worker")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="recoil_jax train mode: this many steps (on copies of the input) in one "
                 "compiled call, unrolled; s/step, faults and system time are per step. XLA:CPU "
                 "allocates the scratch once per call, so this shows the cost of fresh memory "
                 "(the trainer runs one step per call)")
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
    worker = {"scaling": worker_scaling, "torch": worker_torch}.get(spec["kind"], worker_single)
    result = worker(spec)
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
  if args.rounds < 1:
    raise SystemExit("--rounds must be >= 1")
  if args.steps_per_call < 1:
    raise SystemExit("--steps-per-call must be >= 1")
  peers, peer_note = _resolve_peers(args.peers, model)
  malloc_env = _malloc_env(args.malloc)

  from recoil_jax import io  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top
  report = {"machine": _machine(), "model": model, "batch": args.batch, "rounds": args.rounds,
            "peers": peers, "single": [], "scaling": []}
  print(f"# UResNet benchmark — {report['machine']['cpu']} "
        f"({' '.join(report['machine']['vector_extensions'])}), {report['machine']['cpus']} CPUs, "
        f"load average at start {report['machine']['load_average_at_start']}")
  print(f"model overrides: {model or 'none (paper configuration, Table 1)'}; batch {args.batch}; "
        "inputs: random sparse images (timing does not depend on content)")
  if peers:
    report["torch_version"] = importlib.metadata.version("torch")
    print(f"peer: torch {report['torch_version']} — the CosmicTagger UResNet "
          "(src/networks/torch/uresnet2D.py) in the same configuration, eager mode, float32; "
          f"{args.rounds} round(s) per setting, recoil_jax and torch subprocesses alternating")
  print(f"note: {peer_note}" if peer_note else "")

  peer_head = " torch s/step | torch peak RSS GB | torch busy threads | recoil_jax / torch |"
  print("| size (3×H×W) | CPUs | dtype | mode | s/step | events/s | compile s | peak RSS GB | "
        "XLA temp GB | GFLOP/step analytic | GFLOP/step XLA | GFLOP/s | busy threads | "
        "CPU use |" + (peer_head if peers else ""))
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" * 4 if peers else ""))
  for height, width in args.sizes:
    analytic = uresnet.forward_flops(uresnet.UResNet(**model), height, width)["total"]
    for t in threads:
      for dtype in dtypes:
        for mode in modes:
          spec = {"kind": "single", "size": (height, width), "threads": t, "dtype": dtype,
                  "mode": mode, "batch": args.batch, "repeats": args.repeats,
                  "budget_s": args.budget_s, "model": model,
                  "steps_per_call": args.steps_per_call if mode == "train" else 1}
          # The peer is float32 only (recoil_jax's bfloat16 keeps float32 parameters; a torch
          # autocast run would be a different computation). It runs one step per call.
          peer_spec = (dict(spec, kind="torch", steps_per_call=1) if peers and dtype == "float32"
                       else None)
          runs, peer_runs = [], []
          for _ in range(args.rounds):  # alternate, so that load changes hit both
            runs.append(_run_worker(spec, malloc_env, args.timeout_s))
            if peer_spec:
              peer_spec["device"] = "cuda" if runs[-1].get("backend") in ("gpu", "cuda") else "cpu"
              peer_runs.append(_run_worker(peer_spec, malloc_env, args.timeout_s))
          r = _combine(runs)
          entry = {"spec": spec, "result": r}
          peer_cells = ""
          if peer_spec:
            pr = _combine(peer_runs)
            ratio = None
            if "error" not in pr:
              pr["analytic_flops"] = analytic * args.batch * (3 if mode == "train" else 1)
              pr["gflops_per_s"] = pr["analytic_flops"] / pr["step_s"] / 1e9
              if "error" not in r:
                ratio = r["step_s"] / pr["step_s"]
            entry.update(peers={"torch": pr}, ratio_to_torch=ratio)
            peer_cells = (f" {pr['error']} | | | |" if "error" in pr else
                          f" {pr['step_s']:.3g} | {pr['peak_rss_mb'] / 1024:.2f} | "
                          f"{_fmt(pr['busy_threads'], 'd')} | {_fmt(ratio)} |")
          elif peers:
            peer_cells = " no float32 peer | | | |"
          report["single"].append(entry)
          head = f"| 3×{height}×{width} | {t} | {dtype} | {mode} |"
          if "error" in r:
            print(f"{head} {r['error']} | | | | | {analytic * args.batch / 1e9:.4g} | | | | |"
                  + peer_cells, flush=True)
            continue
          print(f"{head} {r['step_s']:.3g} | {args.batch / r['step_s']:.3g} | "
                f"{r['compile_s']:.3g} | "
                f"{r['peak_rss_mb'] / 1024:.2f} | {_fmt(r['xla_temp_bytes'], '.2f', 2**-30)} | "
                f"{r['analytic_flops'] / 1e9:.4g} | "
                f"{_fmt(r['xla_flops'], '.4g', 1e-9)} | {r['gflops_per_s']:.3g} | "
                f"{_fmt(r['busy_threads'], 'd')} | {r['cpu_utilisation']:.2f} |" + peer_cells,
                flush=True)
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
  if args.steps_per_call > 1:
    print(f"\nrecoil_jax train steps per compiled call: {args.steps_per_call} (unrolled; the peer "
          "and the trainer run one per call); figures per step.")
  print(f"\nmalloc: {args.malloc}" + (" (" + " ".join(f"{k}={v}" for k, v in malloc_env.items())
                                       + ")" if malloc_env else "") + "; minor page faults and system seconds "
        "per timed step (recoil_jax / torch):")
  for entry in report["single"]:
    r, pr = entry["result"], entry.get("peers", {}).get("torch", {})
    if "error" in r:
      continue
    spec = entry["spec"]
    cells = [f"{r.get('minor_faults_per_step', float('nan')):.0f} / "
             f"{pr.get('minor_faults_per_step', float('nan')):.0f} faults",
             f"{r.get('system_s_per_step', float('nan')):.2f} / "
             f"{pr.get('system_s_per_step', float('nan')):.2f} s"]
    print(f"  3×{spec['size'][0]}×{spec['size'][1]}, {spec['threads']} CPUs, {spec['dtype']}, "
          f"{spec['mode']}: " + ", ".join(cells))
  if peers:
    _print_peer_check(report, args.rounds)

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
