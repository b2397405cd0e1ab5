"""Benchmark: the TPC paper's network on simulated 50 keV tracks, recoil_jax vs its peers.

Runs, on the *same* batch of simulated 50 keV electron recoils (the preprocessing of
arXiv 2403.15949, σ = 443 µm, 120³ voxels), the paper's network trunk
(SparseConv3d(1→50, k6, s2) → ReLU → SparseMaxPool(2, 2) → SparseConv3d(50→30, k4) → ReLU
→ SparseConv3d(30→20, k3) → ReLU → SparseMaxPool(2, 2) → dense 20×12³) plus the
homoscedastic head, forward and forward+backward, with:

  recoil_jax   sparse ops (XLA reference path), jit-compiled
  jax_dense    the same layer shapes as dense XLA 3D convolutions (lax.conv) on 120³
  spconv       spconv 2.x on CPU (``peers`` extra), forward and forward+backward
  torch_dense  torch.nn.Conv3d / MaxPool3d on 120³ (``peers`` extra)

The forward+backward timings are of the gradient of the loss the recoil_jax route trains
with, the cosine-similarity loss mean(−ŷ·y / max(|ŷ||y|, 1e−8)) of the "cosine" head, written
out identically in torch for spconv and torch_dense (jax_dense uses −mean(ŷ·y), the same value
for unit labels).

How spconv 2.3.8 is run on CPU (all inside the spconv route, nothing else is affected):
  * its CPU backward asks for the current CUDA stream (``torch.cuda.current_stream()``), which
    raises "Torch not compiled with CUDA enabled" on a CPU-only torch; the stream is unused on
    CPU, so ``spconv.pytorch.ops.get_current_stream`` is replaced by ``lambda: 0``. With that,
    weight and input gradients match a dense conv3d (checked every run, see below);
  * its CPU forward is racy with more than one torch thread (here, with 2: the first layer's
    outputs off by 6-13 % and different from call to call; input gradients too), so it runs
    with ``torch.set_num_threads(1)``, which alone removes the race. Its process also gets
    ``OMP_NUM_THREADS=1`` for the OpenMP runtime spconv bundles (not torch's), so that the
    route is one thread throughout: its events/s are one-core numbers even in the default
    mode;
  * its 1×1×1 convolutions read the weight layout wrongly; the paper's network has none
    (kernels 6, 4, 3; the k2 max-pools have no weights), and the route refuses to run a
    network that has one;
  * its CPU max-pool backward gives the whole upstream gradient to every input that ties for
    the maximum (recoil_jax and torch give it to one). The simulated charges are electron
    counts (integers), so the first max-pool sees exact ties (about 0.15 % of its outputs)
    and spconv's gradients below it (first conv, input) differ by several %. This does not
    change the work timed, but the cross-check's verdict uses tie-free charges (below).

Cross-check (whenever spconv is benchmarked and ``--check-events`` > 0): before the timing,
one child process (same pinning and thread settings as the timed ones) runs both libraries
on the first ``--check-events`` events of the batch with the same weights (recoil_jax's
initialisation copied into spconv: kernels [K0, K1, K2, Cin, Cout] → spconv's
[Cout, K0, K1, K2, Cin], the first dense layer's rows permuted from recoil_jax's channels-last
flatten to torch's channels-first one) and prints the max relative difference
(max |a − b| / max(|a|, |b|) per tensor) of the whole network's output and loss and of every
weight and bias gradient and the input-charge gradient, twice: on charges × (1 + 1e−3·U[0, 1))
(tie-free; this decides PASSED, tolerance 1e−4) and on the raw charges. It also checks
spconv's first conv against a dense torch conv3d (active-site set, forward at those sites,
weight/bias/input gradients) and its first max-pool against max_pool3d (counting tied maxima).

Each implementation runs in its own subprocess, alternating across ``--rounds`` (the
speed-ups are then medians of per-round ratios: each round times both sides under similar
load). ``--cores N`` is the core-for-core mode: every child (the cross-check too) is pinned
with ``os.sched_setaffinity`` to the first N CPUs of the parent's mask before numpy, jax or
torch are imported (XLA:CPU sizes its thread pools from the affinity mask; XLA_FLAGS do not
limit it), and torch uses N threads (spconv 1, see above). Without it (the default) the
children see every CPU the parent does.

"Peak RSS" is the high-water resident set of the child's own process image (VmHWM of
/proc/self/status, read at its end): the interpreter, the imported libraries (jax/XLA or
torch/spconv), the batch, jit compilation and the timed calls. ``getrusage(RUSAGE_SELF)
.ru_maxrss`` is stored too (``ru_maxrss_mb``) but is not that number on Linux: it keeps the
maximum across exec, so a child spawned by this parent (jax and the simulator loaded) starts
at the parent's resident size.

Prints events/s, peak RSS and ratios recoil_jax / peer, plus the simulator's tracks/s and
the machine's load average, and writes a JSON file.

  python scripts/bench_sparse_conv.py --batch 64 --repeats 5 --out bench_sparse_conv.json
  python scripts/bench_sparse_conv.py --batch 64 --impls recoil_jax,spconv --rounds 3
  python scripts/bench_sparse_conv.py --batch 64 --impls recoil_jax,spconv --rounds 3 --cores 1
"""

from __future__ import annotations

import os
import sys

# Core-for-core mode: a child is pinned here, before numpy (BLAS), jax (XLA) or torch size
# their thread pools from the affinity mask. The parent sets this variable for its children.
_PIN_ENV = "RECOIL_BENCH_SPARSE_CONV_CPUS"
if os.environ.get(_PIN_ENV):
  os.sched_setaffinity(0, {int(c) for c in os.environ[_PIN_ENV].split(",")})

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import platform  # pylint: disable=g-import-not-at-top,wrong-import-position
import resource  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

IMPLS = ("recoil_jax", "jax_dense", "spconv", "torch_dense")
GRID = 120
TRUNK_OUT = (12, 12, 12, 20)  # the paper trunk's dense output (D0, D1, D2, C)
CHECK_RTOL = 1e-4  # float32 agreement asked of the cross-check (max |a-b| / max |a|,|b|)
# recoil_jax parameter names → index in the spconv route's SparseSequential / head Sequential.
SPCONV_CONVS = {"conv0": 0, "conv2": 3, "conv3": 5}
TORCH_HEAD = {("shared",): 1, ("direction", "Dense_0"): 3, ("direction", "Dense_1"): 5,
              ("direction", "Dense_2"): 7}


def make_batch(batch: int, seed: int, max_voxels: int, energy_kev: float = 50.0,
               sigma_um: float = 443.0):
  """Simulated tracks (default 50 keV, σ = 443 µm), preprocessed as the paper → padded voxels."""
  from recoil_jax.studies.tpc import preprocess as tpc_preprocess
  from recoil_jax.physics import electron_recoils as electron_recoil

  t0 = time.perf_counter()
  tracks = electron_recoil.simulate_electron_recoils(seed, energy_kev, num_tracks=4 * batch)
  sim_seconds = time.perf_counter() - t0
  vox, counts = tpc_preprocess.preprocess_tracks(
      tracks.positions_mm, tracks.num_electrons, tracks.energy_kev,
      np.random.default_rng(seed), sigma_um=sigma_um, max_voxels=max_voxels)
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


def _num_cpus() -> int:
  """CPUs this process may run on (its affinity mask; all of them unless pinned)."""
  return len(os.sched_getaffinity(0))


# --- weight layouts and comparisons (numpy only) -------------------------------------------
def kernel_to_spconv(kernel: np.ndarray) -> np.ndarray:
  """recoil_jax / flax kernel [K0, K1, K2, Cin, Cout] → spconv 2.x KRSC [Cout, K0, K1, K2, Cin]."""
  return np.ascontiguousarray(np.transpose(kernel, (4, 0, 1, 2, 3)))


def kernel_from_spconv(weight: np.ndarray) -> np.ndarray:
  """spconv 2.x KRSC [Cout, K0, K1, K2, Cin] → [K0, K1, K2, Cin, Cout]."""
  return np.transpose(weight, (1, 2, 3, 4, 0))


def dense_kernel_to_torch(kernel: np.ndarray, grid: tuple[int, int, int, int] = TRUNK_OUT):
  """First dense layer: flax [D0·D1·D2·C, out] (rows in recoil_jax's channels-last flatten
  order) → torch Linear weight [out, C·D0·D1·D2] (columns in spconv ToDense's NCDHW order)."""
  d0, d1, d2, c = grid
  k = kernel.reshape(d0, d1, d2, c, -1).transpose(3, 0, 1, 2, 4).reshape(c * d0 * d1 * d2, -1)
  return np.ascontiguousarray(k.T)


def dense_kernel_from_torch(weight: np.ndarray, grid: tuple[int, int, int, int] = TRUNK_OUT):
  """Inverse of `dense_kernel_to_torch`."""
  d0, d1, d2, c = grid
  return weight.T.reshape(c, d0, d1, d2, -1).transpose(1, 2, 3, 0, 4).reshape(d0 * d1 * d2 * c, -1)


def max_rel_diff(a, b) -> float:
  """max |a − b| / max(max |a|, max |b|) (0 when both are zero)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
  diff = np.max(np.abs(a - b), initial=0.0)
  return float(diff / scale) if scale > 0 else float(diff)


def sparse_rows(coords, charges, nvox):
  """Padded voxels → spconv rows: indices [N, 4] int32 (batch, i0, i1, i2), features [N, 1]."""
  rows = [np.concatenate([np.full((n, 1), i), coords[i, :n]], 1) for i, n in enumerate(nvox)]
  feats = np.concatenate([charges[i, :n] for i, n in enumerate(nvox)])[:, None]
  return np.concatenate(rows).astype(np.int32), np.ascontiguousarray(feats, np.float32)


# --- torch / spconv helpers ------------------------------------------------------------------
def _torch_direction(torch, h):
  """Unit vector as recoil_jax's head: h / sqrt(|h|² + 1e-12)."""
  return h / torch.sqrt((h * h).sum(-1, keepdim=True) + 1e-12)


def _torch_cosine_loss(torch, pred, y):
  """recoil_jax's ``cosine_similarity_loss(pred, y).mean()`` written in torch."""
  denom = torch.clamp_min(torch.linalg.vector_norm(pred, dim=-1)
                          * torch.linalg.vector_norm(y, dim=-1), 1e-8)
  return (-(pred * y).sum(-1) / denom).mean()


def _torch_head():
  import torch
  return torch.nn.Sequential(
      torch.nn.Flatten(), torch.nn.Linear(int(np.prod(TRUNK_OUT)), 500), torch.nn.ReLU(),
      torch.nn.Linear(500, 200), torch.nn.ReLU(), torch.nn.Linear(200, 50), torch.nn.Tanh(),
      torch.nn.Linear(50, 3))


def spconv_setup():
  """torch and spconv.pytorch, set up to run correctly on a CPU (see the module docstring)."""
  import torch
  # spconv's CPU forward is racy with > 1 torch thread (outputs off by several %, varying
  # from call to call); one thread removes it. The parent also sets OMP_NUM_THREADS=1 for
  # the OpenMP runtime spconv bundles, so that the route is one thread throughout.
  torch.set_num_threads(1)
  import spconv.pytorch as spconv  # pylint: disable=g-import-not-at-top
  import spconv.pytorch.ops as spconv_ops  # pylint: disable=g-import-not-at-top
  # spconv's CPU backward asks torch.cuda for the current stream, which raises "Torch not
  # compiled with CUDA enabled" on a CPU torch; the stream is unused on CPU, so give it 0.
  spconv_ops.get_current_stream = lambda: 0
  return torch, spconv


def spconv_net(spconv, torch):
  """The paper trunk in spconv (weights KRSC); refuses 1×1×1 convs (wrong layout on CPU)."""
  net = spconv.SparseSequential(
      spconv.SparseConv3d(1, 50, 6, 2), torch.nn.ReLU(), spconv.SparseMaxPool3d(2, 2),
      spconv.SparseConv3d(50, 30, 4), torch.nn.ReLU(), spconv.SparseConv3d(30, 20, 3),
      torch.nn.ReLU(), spconv.SparseMaxPool3d(2, 2), spconv.ToDense())
  for m in net.modules():
    if getattr(m, "conv1x1", False):
      raise ValueError("spconv's 1x1x1 convolutions read the weight layout wrongly on CPU")
  return net


# --- implementations (each returns {"forward_s": ..., "backward_s": ... or error}) ----------
def run_recoil_jax(coords, charges, nvox, labels, repeats):
  import jax
  import jax.numpy as jnp
  from recoil_jax.losses import direction as direction_losses
  from recoil_jax.studies.tpc import model as tpc_model

  model = tpc_model.TpcDirectionNet(trunk="paper", head="cosine")
  batch = {"coords": jnp.asarray(coords), "charges": jnp.asarray(charges),
           "num_voxels": jnp.asarray(nvox)}
  # Jitted init, as the trainer does (train.create_train_state): an eager init runs the sparse ops
  # op by op and leaves ~0.26 GB more resident memory behind.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
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


def run_torch_dense(coords, charges, nvox, labels, repeats):
  import torch
  torch.set_num_threads(_num_cpus())
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
    _torch_cosine_loss(torch, _torch_direction(torch, net(x)), y).backward()

  return {"forward_s": _timeit(fwd, repeats), "backward_s": _timeit(bwd, repeats),
          "torch_threads": torch.get_num_threads()}


def run_spconv(coords, charges, nvox, labels, repeats):
  torch, spconv = spconv_setup()
  net = spconv_net(spconv, torch)
  head = _torch_head()
  indices_np, feats_np = sparse_rows(coords, charges, nvox)
  indices = torch.from_numpy(indices_np)
  feats = torch.from_numpy(feats_np)
  y = torch.from_numpy(np.asarray(labels))

  def tensor():
    return spconv.SparseConvTensor(feats, indices, [GRID] * 3, len(nvox))

  def fwd():
    with torch.no_grad():
      _torch_direction(torch, head(net(tensor())))

  def bwd():
    net.zero_grad()
    head.zero_grad()
    _torch_cosine_loss(torch, _torch_direction(torch, head(net(tensor()))), y).backward()

  out = {"forward_s": _timeit(fwd, repeats), "torch_threads": torch.get_num_threads()}
  try:
    out["backward_s"] = _timeit(bwd, repeats)
  except Exception as e:  # pylint: disable=broad-except
    out["backward_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  return out


# --- cross-check: spconv vs recoil_jax (same weights) and vs a dense conv3d -----------------
def _sparse_backward_and_dense_input(torch, spconv, module, indices_np, feats_np, batch_size,
                                     spatial, seed):
  """Runs ``module`` on the sparse input and back-propagates sum(out · R) (R fixed random);
  returns (feats, out, R, input indices, output indices, the same input as a dense
  [B, C, *spatial] leaf tensor that requires grad) for the dense reference."""
  feats = torch.from_numpy(feats_np).requires_grad_(True)
  out = module(spconv.SparseConvTensor(feats, torch.from_numpy(indices_np), list(spatial),
                                       batch_size))
  r = torch.from_numpy(np.random.default_rng(seed).standard_normal(
      tuple(out.features.shape)).astype(np.float32))
  (out.features * r).sum().backward()
  ii = torch.from_numpy(indices_np).long()
  xd = torch.zeros(batch_size, feats_np.shape[1], *spatial)
  xd[ii[:, 0], :, ii[:, 1], ii[:, 2], ii[:, 3]] = torch.from_numpy(feats_np)
  return feats, out, r, ii, out.indices.long(), xd.requires_grad_(True)


def spconv_layer_vs_dense(torch, spconv, layer, indices_np, feats_np, batch_size, spatial,
                          seed=0) -> dict:
  """One spconv conv layer (its current weights) vs ``torch.nn.functional.conv3d``.

  Returns the max relative differences of the forward at spconv's output sites and of the
  weight, bias and input gradients of sum(out · R) (R fixed random), and whether spconv's
  output sites are exactly the sites whose window holds an active input.
  """
  fn = torch.nn.functional
  layer.zero_grad()
  feats, out, r, ii, oi, xd = _sparse_backward_and_dense_input(
      torch, spconv, layer, indices_np, feats_np, batch_size, spatial, seed)
  w = layer.weight.detach().permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)  # OIDHW
  b = layer.bias.detach().clone().requires_grad_(True)
  conv = dict(stride=tuple(layer.stride), padding=tuple(layer.padding),
              dilation=tuple(layer.dilation))
  dense_out = fn.conv3d(xd, w, b, **conv)
  at_sites = dense_out[oi[:, 0], :, oi[:, 1], oi[:, 2], oi[:, 3]]
  (at_sites * r).sum().backward()

  occupancy = torch.zeros(batch_size, 1, *spatial)
  occupancy[ii[:, 0], :, ii[:, 1], ii[:, 2], ii[:, 3]] = 1.0
  reach = fn.conv3d(occupancy, torch.ones(1, 1, *w.shape[2:]), **conv)[:, 0] > 0
  expected = {tuple(s) for s in torch.nonzero(reach).tolist()}
  got = {tuple(s) for s in oi.tolist()}
  return {
      "sites_equal": expected == got, "sites": len(got), "expected_sites": len(expected),
      "forward": max_rel_diff(out.features.detach().numpy(), at_sites.detach().numpy()),
      "grad_weight": max_rel_diff(layer.weight.grad.numpy(),
                                  w.grad.permute(0, 2, 3, 4, 1).numpy()),
      "grad_bias": max_rel_diff(layer.bias.grad.numpy(), b.grad.numpy()),
      "grad_input": max_rel_diff(
          feats.grad.numpy(), xd.grad[ii[:, 0], :, ii[:, 1], ii[:, 2], ii[:, 3]].numpy()),
  }


def spconv_maxpool_vs_dense(torch, spconv, pool, indices_np, feats_np, batch_size, spatial,
                            seed=0) -> dict:
  """One spconv max-pool (no padding, dilation 1) vs ``torch.nn.functional.max_pool3d``.

  Returns the max relative differences of the forward at spconv's output sites and of the
  input gradient of sum(out · R) (R fixed random) at the non-zero inputs (the ones a ReLU
  before the pool lets through), and how many outputs have a non-zero maximum attained by
  more than one input: on those, spconv's CPU backward gives the whole upstream gradient to
  every tied input, torch (and recoil_jax) to one.
  """
  fn = torch.nn.functional
  ks, st = tuple(pool.kernel_size), tuple(pool.stride)
  if any(tuple(pool.padding)) or any(d != 1 for d in pool.dilation):
    raise ValueError("spconv_maxpool_vs_dense: padding 0 and dilation 1 only")
  feats, out, r, ii, oi, xd = _sparse_backward_and_dense_input(
      torch, spconv, pool, indices_np, feats_np, batch_size, spatial, seed)
  at_sites = fn.max_pool3d(xd, ks, st)[oi[:, 0], :, oi[:, 1], oi[:, 2], oi[:, 3]]
  (at_sites * r).sum().backward()
  windows = xd.detach()
  for axis in range(3):
    windows = windows.unfold(2 + axis, ks[axis], st[axis])
  windows = windows.flatten(-3)[oi[:, 0], :, oi[:, 1], oi[:, 2], oi[:, 3]]  # [M, C, k³]
  top = windows.max(-1, keepdim=True).values
  tied = int((((windows == top).sum(-1) > 1) & (top[..., 0] > 0)).sum())
  nonzero = feats_np > 0
  return {
      "forward": max_rel_diff(out.features.detach().numpy(), at_sites.detach().numpy()),
      "grad_input_nonzero": max_rel_diff(
          feats.grad.numpy()[nonzero],
          xd.grad[ii[:, 0], :, ii[:, 1], ii[:, 2], ii[:, 3]].numpy()[nonzero]),
      "tied_nonzero_outputs": tied, "outputs": int(np.prod(tuple(out.features.shape))),
  }


def run_crosscheck(coords, charges, nvox, labels, n_events):
  """spconv (patched, one thread) vs recoil_jax on the whole network with recoil_jax's
  weights copied, and spconv's first conv / first max-pool vs dense torch ops.

  The pass/fail verdict uses the charges multiplied by 1 + 1e-3·U[0, 1): the simulated
  charges are electron counts (integers), which give the first max-pool exactly tied
  maxima, and on a tie spconv's CPU max-pool backward gives the whole upstream gradient to
  every tied input (recoil_jax and torch give it to one), so gradients below that pool
  differ there. The raw-charge differences are reported too (``raw_charges``).
  """
  torch, spconv = spconv_setup()
  import jax
  import jax.numpy as jnp
  from recoil_jax.losses import direction as direction_losses
  from recoil_jax.studies.tpc import model as tpc_model

  n = min(n_events, coords.shape[0])
  coords, charges, nvox, labels = coords[:n], charges[:n], nvox[:n], np.asarray(labels[:n])
  jittered = (charges * (1 + 1e-3 * np.random.default_rng(0).random(charges.shape))).astype(
      np.float32)

  # recoil_jax: outputs and gradients w.r.t. the parameters and the input charges.
  model = tpc_model.TpcDirectionNet(trunk="paper", head="cosine")
  batch = {"coords": jnp.asarray(coords), "charges": jnp.asarray(charges, jnp.float32),
           "num_voxels": jnp.asarray(nvox)}
  params = model.init(jax.random.PRNGKey(0), batch)

  def loss_fn(p, ch):
    out = model.apply(p, {**batch, "charges": ch})
    loss = direction_losses.cosine_similarity_loss(out["pred_direction"], jnp.asarray(labels))
    return loss.mean(), out

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
  p_np = jax.tree_util.tree_map(np.asarray, params)["params"]

  # spconv with the same weights.
  net = spconv_net(spconv, torch)
  head = _torch_head()
  with torch.no_grad():
    for name, idx in SPCONV_CONVS.items():
      w = kernel_to_spconv(p_np["trunk"][name]["kernel"])
      if tuple(net[idx].weight.shape) != w.shape:
        raise ValueError(f"spconv {name} weight {tuple(net[idx].weight.shape)} vs {w.shape}")
      net[idx].weight.copy_(torch.from_numpy(w))
      net[idx].bias.copy_(torch.from_numpy(p_np["trunk"][name]["bias"]))
    for path, idx in TORCH_HEAD.items():
      leaf = p_np[path[0]] if len(path) == 1 else p_np[path[0]][path[1]]
      k = dense_kernel_to_torch(leaf["kernel"]) if path == ("shared",) else leaf["kernel"].T
      head[idx].weight.copy_(torch.from_numpy(np.ascontiguousarray(k)))
      head[idx].bias.copy_(torch.from_numpy(leaf["bias"]))

  def compare(ch):
    (j_loss, j_out), (j_gp, j_gch) = grad_fn(params, jnp.asarray(ch))
    g_np = jax.tree_util.tree_map(np.asarray, j_gp)["params"]
    indices_np, feats_np = sparse_rows(coords, ch, nvox)
    net.zero_grad()
    head.zero_grad()
    feats = torch.from_numpy(feats_np).requires_grad_(True)
    x = spconv.SparseConvTensor(feats, torch.from_numpy(indices_np), [GRID] * 3, n)
    pred = _torch_direction(torch, head(net(x)))
    loss = _torch_cosine_loss(torch, pred, torch.from_numpy(labels))
    loss.backward()
    diffs = {"forward pred_direction": max_rel_diff(pred.detach().numpy(),
                                                    j_out["pred_direction"]),
             "loss": max_rel_diff(loss.item(), j_loss)}
    for name, idx in SPCONV_CONVS.items():
      diffs[f"grad trunk/{name}/kernel"] = max_rel_diff(
          kernel_from_spconv(net[idx].weight.grad.numpy()), g_np["trunk"][name]["kernel"])
      diffs[f"grad trunk/{name}/bias"] = max_rel_diff(
          net[idx].bias.grad.numpy(), g_np["trunk"][name]["bias"])
    for path, idx in TORCH_HEAD.items():
      leaf = g_np[path[0]] if len(path) == 1 else g_np[path[0]][path[1]]
      gw = head[idx].weight.grad.numpy()
      gk = dense_kernel_from_torch(gw) if path == ("shared",) else gw.T
      diffs[f"grad {'/'.join(path)}/kernel"] = max_rel_diff(gk, leaf["kernel"])
      diffs[f"grad {'/'.join(path)}/bias"] = max_rel_diff(head[idx].bias.grad.numpy(),
                                                          leaf["bias"])
    j_gch = np.asarray(j_gch)
    diffs["grad input charges"] = max_rel_diff(
        feats.grad.numpy()[:, 0], np.concatenate([j_gch[i, :k] for i, k in enumerate(nvox)]))
    return diffs, int(j_out["overflow"][0])

  indices_np, feats_np = sparse_rows(coords, charges, nvox)
  result = {"events": n, "voxels": int(indices_np.shape[0]),
            "torch_threads": torch.get_num_threads(), "rtol": CHECK_RTOL}
  result["spconv_vs_recoil_jax"], overflow = compare(jittered)
  result["raw_charges"], _ = compare(charges.astype(np.float32))
  result["recoil_jax_capacity_overflow"] = overflow

  # spconv's first conv vs a dense conv3d (these weights), and its first max-pool on that
  # conv's ReLU output (raw charges) vs max_pool3d: there the tied maxima show up.
  result["layer0_vs_dense_conv3d"] = spconv_layer_vs_dense(
      torch, spconv, net[0], indices_np, feats_np, n, (GRID,) * 3)
  with torch.no_grad():
    h = net[0](spconv.SparseConvTensor(torch.from_numpy(feats_np),
                                       torch.from_numpy(indices_np), [GRID] * 3, n))
  result["pool1_vs_dense_max_pool3d"] = spconv_maxpool_vs_dense(
      torch, spconv, net[2], h.indices.numpy(), torch.relu(h.features).numpy(), n,
      tuple(h.spatial_shape))

  layer = result["layer0_vs_dense_conv3d"]
  worst = max(list(result["spconv_vs_recoil_jax"].values())
              + [layer[k] for k in ("forward", "grad_weight", "grad_bias", "grad_input")])
  result["max_rel_diff"] = worst
  result["passed"] = bool(worst < CHECK_RTOL and layer["sites_equal"] and overflow == 0)
  return result


RUNNERS = {"recoil_jax": run_recoil_jax, "jax_dense": run_jax_dense,
           "spconv": run_spconv, "torch_dense": run_torch_dense}


def _peak_rss_mb() -> float | None:
  """VmHWM of this process image (MB), or None where /proc is missing."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def child(args) -> None:
  data = np.load(args.data)
  arrays = (data["coords"], data["charges"], data["num_voxels"], data["direction"])
  try:
    if args.impl == "crosscheck":
      result = run_crosscheck(*arrays, args.check_events)
    else:
      result = RUNNERS[args.impl](*arrays, args.repeats)
  except ImportError as e:
    result = {"skipped": f"not installed ({e.name}); install the 'peers' extra"}
  except Exception as e:  # pylint: disable=broad-except  # a measured failure is a result too
    result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
  ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  peak = _peak_rss_mb()
  result["peak_rss_mb"] = ru_maxrss if peak is None else peak
  result["ru_maxrss_mb"] = ru_maxrss
  result["cpus"] = sorted(os.sched_getaffinity(0))
  print("RESULT " + json.dumps(result))


def _run_child(impl: str, data_path: str, repeats: int, cpus: list[int] | None,
               check_events: int = 0) -> dict:
  """Runs one implementation in a fresh process; ``name@PATH`` imports recoil_jax from PATH."""
  base, _, tree = impl.partition("@")
  env = dict(os.environ)
  env.pop(_PIN_ENV, None)
  if cpus:
    env[_PIN_ENV] = ",".join(map(str, cpus))
  if base in ("spconv", "crosscheck"):
    env["OMP_NUM_THREADS"] = "1"  # spconv's bundled OpenMP runtime: one thread throughout
  if tree:
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(tree)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  cmd = [sys.executable, os.path.abspath(__file__), "--impl", base, "--data", data_path,
         "--repeats", str(repeats), "--check-events", str(check_events)]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
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
  for key in ("error", "skipped", "backward_error", "capacity_overflow", "torch_threads",
              "cpus"):
    notes = [r[key] for r in runs if key in r]
    if notes:
      out[key] = notes[0]
  for key in ("peak_rss_mb", "ru_maxrss_mb"):
    vals = [r[key] for r in runs if key in r]
    if vals:
      out[key] = max(vals)
  return out


def _print_crosscheck(res: dict) -> None:
  if "passed" not in res:
    print(f"cross-check spconv vs recoil_jax: not run ({res.get('skipped') or res.get('error')})")
    return
  layer, pool = res["layer0_vs_dense_conv3d"], res["pool1_vs_dense_max_pool3d"]
  print(f"cross-check on {res['events']} events ({res['voxels']} voxels), spconv with "
        f"{res['torch_threads']} torch thread(s); max relative difference "
        f"max|a-b|/max(|a|,|b|) per tensor, tolerance {res['rtol']:g}:")
  print(f"  spconv conv 0 vs dense conv3d: sites {'equal' if layer['sites_equal'] else 'DIFFER'} "
        f"({layer['sites']} vs {layer['expected_sites']}), forward {layer['forward']:.1e}, "
        f"grad weight {layer['grad_weight']:.1e}, bias {layer['grad_bias']:.1e}, "
        f"input {layer['grad_input']:.1e}")
  print(f"  spconv pool 1 vs dense max_pool3d (raw charges): forward {pool['forward']:.1e}, "
        f"grad at non-zero inputs {pool['grad_input_nonzero']:.1e}; "
        f"{pool['tied_nonzero_outputs']} of {pool['outputs']} outputs have a tied non-zero max")
  print(f"  {'spconv vs recoil_jax, same weights':<44} {'tie-free':>9} {'raw':>9}")
  for name, v in res["spconv_vs_recoil_jax"].items():
    print(f"  {name:<44} {v:>9.1e} {res['raw_charges'][name]:>9.1e}")
  overflow = res["recoil_jax_capacity_overflow"]
  print(f"  => {'PASSED' if res['passed'] else 'FAILED'} (tie-free charges = raw x (1 + 1e-3 U)): "
        f"max {res['max_rel_diff']:.1e}"
        + (f"; recoil_jax capacity overflow {overflow}" if overflow else "")
        + ". Raw integer charges tie maxima in pool 1, where spconv's CPU backward gives the "
        "gradient to every tied input, hence the raw column's differences below that pool.")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=1,
                 help="run the implementations this many times, alternating, and report medians "
                      "(and the median of the per-round speed-ups): fairer on a shared machine")
  p.add_argument("--cores", type=int, default=0,
                 help="core-for-core: pin every child to the first N CPUs of this process's "
                      "mask before jax/torch load (torch uses N threads, spconv 1); 0 (default) "
                      "= no pinning")
  p.add_argument("--check-events", type=int, default=4,
                 help="events of the spconv vs recoil_jax / dense conv3d cross-check, run "
                      "once before the timing when spconv is benchmarked (0 = skip)")
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

  import tempfile  # pylint: disable=g-import-not-at-top
  impls = args.impls.split(",")
  for impl in impls:
    if impl.partition("@")[0] not in RUNNERS:
      raise SystemExit(f"--impls: unknown implementation {impl!r}; known: {', '.join(IMPLS)}")
  allowed = sorted(os.sched_getaffinity(0))
  if args.cores < 0 or args.cores > len(allowed):
    raise SystemExit(f"--cores {args.cores}: this process may use {len(allowed)} CPUs {allowed}")
  cpus = allowed[:args.cores] if args.cores else None

  coords, charges, nvox, labels, _ = make_batch(args.batch, args.seed, args.max_voxels)
  from recoil_jax.physics import electron_recoils as electron_recoil
  n_sim = 2048
  electron_recoil.simulate_electron_recoils(1, 50.0, num_tracks=n_sim)  # compile this shape
  t0 = time.perf_counter()
  electron_recoil.simulate_electron_recoils(2, 50.0, num_tracks=n_sim)
  sim_rate = n_sim / (time.perf_counter() - t0)

  from bench_uresnet import vector_extensions  # pylint: disable=g-import-not-at-top
  report = {"machine": {"cpus": os.cpu_count(), "affinity": allowed,
                        "vector_extensions": vector_extensions(),
                        "platform": platform.platform(), "python": platform.python_version()},
            "batch": args.batch, "cores": args.cores, "children_pinned_to": cpus,
            "active_voxels_per_event": float(np.mean(nvox)),
            "simulator_tracks_per_s_50keV": sim_rate, "impls": {},
            "load_average_1min": [os.getloadavg()[0]]}
  runs: dict[str, list[dict]] = {impl: [] for impl in impls}
  ours_name = next((i for i in impls if i.partition("@")[0] == "recoil_jax"), impls[0])
  with tempfile.TemporaryDirectory() as tmp:
    data_path = os.path.join(tmp, "batch.npz")
    np.savez(data_path, coords=coords, charges=charges, num_voxels=nvox, direction=labels)
    if args.check_events > 0 and any(i.partition("@")[0] == "spconv" for i in impls):
      tree = ours_name.partition("@")[2] if ours_name.startswith("recoil_jax") else ""
      report["crosscheck"] = _run_child("crosscheck" + (f"@{tree}" if tree else ""), data_path,
                                        1, cpus, args.check_events)
      report["load_average_1min"].append(os.getloadavg()[0])
    for _ in range(args.rounds):
      for impl in impls:
        runs[impl].append(_run_child(impl, data_path, args.repeats, cpus))
        report["load_average_1min"].append(os.getloadavg()[0])
  report["impls"] = {impl: _aggregate(r) for impl, r in runs.items()}

  print(f"machine: {report['machine']}")
  print(f"batch {args.batch} simulated 50 keV tracks (σ 443 µm), "
        f"{report['active_voxels_per_event']:.0f} active voxels/event; {args.rounds} round(s) x "
        f"{args.repeats} repeats; 1-min load average during the run: "
        + " ".join(f"{v:.1f}" for v in report["load_average_1min"]))
  print("mode: " + (f"core for core, every implementation pinned to CPU(s) {cpus}" if cpus else
                    "default (children unpinned; spconv single-threaded regardless)"))
  print(f"simulator: {sim_rate:.0f} tracks/s (50 keV, warm)")
  if "crosscheck" in report:
    _print_crosscheck(report["crosscheck"])
  print(f"{'impl':<12} {'fwd ev/s':>10} {'fwd+bwd ev/s':>13} {'peak RSS MB':>12} "
        f"{'threads':>8}  note  (thr: torch threads; cpu: CPUs XLA may use)")
  for impl, r in report["impls"].items():
    f = args.batch / r["forward_s"] if "forward_s" in r else float("nan")
    b = args.batch / r["backward_s"] if "backward_s" in r else float("nan")
    note = r.get("error") or r.get("skipped") or r.get("backward_error", "")
    threads = (f"{r['torch_threads']} thr" if "torch_threads" in r
               else f"{len(r['cpus'])} cpu" if "cpus" in r else "")
    print(f"{impl:<12} {f:>10.1f} {b:>13.1f} {r.get('peak_rss_mb', float('nan')):>12.0f} "
          f"{threads!s:>8}  {note}")
  ours = runs[ours_name]
  ours_agg = report["impls"][ours_name]
  for impl in impls:
    if impl == ours_name:
      continue
    parts = []
    for key, label in (("forward_s", "fwd"), ("backward_s", "fwd+bwd")):
      # events/s ratio ours / theirs = their time / our time, per round.
      ratios = [theirs[key] / mine[key] for mine, theirs in zip(ours, runs[impl])
                if key in mine and key in theirs]
      if ratios:
        report.setdefault("speedup_of_recoil_jax", {}).setdefault(impl, {})[key] = float(
            np.median(ratios))
        spread = f" (rounds {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        parts.append(f"{label} events/s {np.median(ratios):.2f}x{spread}")
    theirs_rss = report["impls"][impl].get("peak_rss_mb")
    if ours_agg.get("peak_rss_mb") and theirs_rss:
      rss_ratio = ours_agg["peak_rss_mb"] / theirs_rss
      report.setdefault("rss_ratio_of_recoil_jax", {})[impl] = rss_ratio
      parts.append(f"peak RSS {rss_ratio:.2f}x")
    if parts:
      print(f"{ours_name} / {impl}: " + ", ".join(parts))
  if args.out:
    from recoil_jax import io  # pylint: disable=g-import-not-at-top
    io.write_text_atomic(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
