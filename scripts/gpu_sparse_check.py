"""GPU check of the Pallas sparse kernels, the SBND UResNet and the spherical layers, with peers.

The one prepared run for a lent GPU (written for an H100/H200). Sections, in this order (``--sections``
picks some; each gets a slice of ``--budget-s`` in proportion to ``SECTION_WEIGHTS``, and time one
leaves unused goes to the later ones):

1. ``selfcheck``: the check that guards ``backend="auto"`` (recoil_jax/ops/sparse/pallas/selfcheck.py),
   run as the first "auto" resolution on this device runs it: a stride-1 (submanifold) conv, a strided
   conv and a max pool, forward / dX / dW, Pallas vs the XLA path, errors against the float32
   summation-order bound; and what "auto" then resolves to;
2. ``check``: on simulated 50 keV electron recoils (σ = 443 µm, the preprocessing of arXiv
   2403.15949, 120³ voxels of 500 µm), every kernel on the GPU against the XLA reference (float32
   products at HIGHEST precision): hash-table history independence under concurrent inserts, each
   paper-trunk rulebook entry for entry, conv forward / dX / dW, max-pool forward / backward, bf16
   forward, and the whole trunk's parameter gradients;
3. ``matmul``: the fp32 (HIGHEST) and bf16 matmul rates of the card;
4. ``network``: the paper's network (trunk + homoscedastic head, recoil_jax/studies/tpc/model.py)
   forward and forward+backward at batch 64 and 256: Pallas vs the XLA path vs the same layers as
   dense 3D convolutions (cuDNN through XLA);
5. ``layers``: each trunk layer the same three ways, and the rulebook alone, with the FLOPs at active
   sites (2 * pairs * C_in * C_out) against the measured fp32 rate and ~790 TFLOP/s bf16;
6. ``uresnet``: the SBND multi-plane UResNet (recoil_jax/studies/sbnd/model.py, Table 1 of arXiv
   2012.01301, 3 planes) forward and forward+backward+RMSProp step at 640×1024 and 128×256, batch 1
   and 8, through scripts/bench_uresnet.py's worker; against the CosmicTagger network in PyTorch
   (`bench_uresnet.torch_uresnet`, same parameter count) on the same inputs when torch with CUDA
   is importable (the ``peers`` extra). The PyTorch peer runs first, in a child process, before JAX claims the
   GPU's memory (``XLA_PYTHON_CLIENT_MEM_FRACTION`` 0.92);
7. ``sphere``: the S²→SO(3) and SO(3)→SO(3) layers (recoil_jax/ops/sphere/layers.py) forward and
   forward+backward at L = 16, 32, 64 (N = 3, batch 8), and their error against the float64 direct
   quadrature of recoil_jax/ops/sphere/reference.py, at JAX's default and at HIGHEST matmul precision,
   wherever the reference's memory and time estimates fit (it holds all Y_ℓm / Wigner-D values at
   point pairs: ~40 GiB at L = 16, so by default it runs at the extra band-limits 6 and 8 only);

and prints markdown tables (the TPC results are on simulated tracks). Work stops at the budget and
what is done is printed; results also go to ``--out`` (JSON) when given. The exit status is 1 when a
correctness check, the self-check or a spherical reference comparison fails.

  python scripts/gpu_sparse_check.py --out gpu_sparse_check.json     # on a GPU (~9 minutes)
  python scripts/gpu_sparse_check.py --sections uresnet,sphere        # a part, with the whole budget
  python scripts/gpu_sparse_check.py --cpu-dry-run                    # CPU, Pallas interpreter, tiny

On a machine without a GPU (and without --cpu-dry-run) it prints a message and exits with status 0.
The dry run uses two tracks cut to 24 voxels, capacities measured on them, one repeat, per-layer
work on the first two layers (a conv and a pool), the Pallas interpreter, the small UResNet of
``bench_uresnet.py --quick`` at 32×64 (batch 1; the PyTorch peer on the CPU if torch is installed)
and the spherical layers at L = 4 (batch 2, with the reference): it checks that every code path
runs (~12 minutes on a busy 2-core CPU); its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import numpy as np  # noqa: E402

from recoil_jax import io  # noqa: E402

GRID = 120
LAYER_NAMES = ("conv k6 s2 1→50", "pool 2", "conv k4 50→30", "conv k3 30→20", "pool 2")
BF16_PEAK_TFLOPS = 790.0  # H200 dense bf16, as quoted in the task; measured rates are printed too
SECTIONS = ("selfcheck", "check", "matmul", "network", "layers", "uresnet", "sphere")
# Shares of --budget-s (seconds of the default 540 s budget), in the order the sections run; the
# shares of the selected sections are renormalised, and time a section leaves goes to later ones.
SECTION_WEIGHTS = {"selfcheck": 30, "check": 60, "matmul": 10, "network": 120, "layers": 80,
                   "uresnet": 150, "sphere": 90}
TORCH_SHARE = 0.4  # of the uresnet share, for the PyTorch peer (run first, in a subprocess)
SPHERE_TOL = 1e-4  # spherical layers vs direct quadrature, float32 at HIGHEST precision (rel. to max)


class Budget:
  """Wall-clock budget: `left()` seconds remain; sections check it before starting work."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()

  def share(self, weight: float, total_weight: float) -> "Budget":
    """A slice of what is left: ``weight / total_weight`` of it (time a section leaves unused goes
    to the later ones)."""
    return Budget(max(0.0, self.left()) * weight / total_weight if total_weight > 0 else 0.0)


def _ms(x):
  return "—" if x is None else f"{1e3 * x:.2f}"


def _short_error(e: BaseException) -> str:
  text = f"{type(e).__name__}: {str(e).strip()}"
  return text.splitlines()[0][:200]


# ---------------------------------------------------------------------------------------------------
# Data.

def make_tracks(batch: int, seed: int, max_voxels: int, voxel_cap: int | None):
  """Simulated 50 keV tracks (σ 443 µm), the paper's preprocessing; padded arrays trimmed to the
  batch's largest event. ``voxel_cap`` keeps only the first voxels of each event (dry run)."""
  from recoil_jax.studies.tpc import preprocess as tpc_preprocess
  from recoil_jax.physics import electron_recoils as electron_recoil
  tracks = electron_recoil.simulate_electron_recoils(seed, 50.0, num_tracks=2 * batch + 8)
  vox, counts = tpc_preprocess.preprocess_tracks(
      tracks.positions_mm, tracks.num_electrons, tracks.energy_kev,
      np.random.default_rng(seed), sigma_um=443.0, max_voxels=max_voxels)
  if vox.coords.shape[0] < batch:
    raise RuntimeError(f"only {vox.coords.shape[0]} tracks kept of {2 * batch + 8} ({counts})")
  num = vox.num_voxels[:batch].copy()
  if voxel_cap is not None:
    num = np.minimum(num, voxel_cap)
  v = int(-(-num.max() // 64) * 64)
  return (vox.coords[:batch, :v], vox.charges[:batch, :v], num.astype(np.int32),
          vox.direction[:batch].astype(np.float32))


def measure_capacities(coords, charges, num) -> list[int]:
  """Largest number of active sites per event after each regular trunk layer (XLA path)."""
  import jax.numpy as jnp
  from recoil_jax.studies.tpc import model as tpc_model
  from recoil_jax.ops import sparse
  need = []
  st = sparse.from_padded_voxels(jnp.asarray(coords), jnp.asarray(charges[..., None]),
                                 jnp.asarray(num), (GRID,) * 3)
  for kind, _, k, s in tpc_model.TRUNKS["paper"]:
    if kind == "conv":
      st = sparse.reference.sparse_conv(st, jnp.ones((k, k, k, st.num_channels, 1)), strides=s)
    else:
      st = sparse.reference.sparse_max_pool(st, k, strides=s)
    b = np.asarray(st.coords)[:, 0]
    need.append(int(np.bincount(b[b >= 0], minlength=coords.shape[0]).max()))
  return need


# ---------------------------------------------------------------------------------------------------
# Timing.

def timeit(fn, repeats: int):
  """(median seconds of ``repeats`` calls after a first, compiling call; first-call seconds)."""
  import jax
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), first


def matmul_rates(repeats: int, n: int) -> dict:
  import jax
  import jax.numpy as jnp
  from jax import lax
  out = {}
  for name, dtype, precision in (("fp32 HIGHEST", jnp.float32, lax.Precision.HIGHEST),
                                 ("fp32 DEFAULT", jnp.float32, None),
                                 ("bf16", jnp.bfloat16, None)):
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y, p=precision: jnp.dot(x, y, precision=p, preferred_element_type=jnp.float32))
    t, _ = timeit(lambda f=f, a=a: f(a, a), repeats)
    out[name] = 2.0 * n ** 3 / t / 1e12
  return out


# ---------------------------------------------------------------------------------------------------
# Section 1: correctness on the device.

def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def check_kernels(coords, charges, num, caps, interpret: bool,
                  max_layers: int = 5) -> list[tuple[str, float, float, bool]]:
  """[(check, error, tolerance, ok)] on the device (per-layer checks for the first ``max_layers``)."""
  import jax
  import jax.numpy as jnp
  from recoil_jax.studies.tpc import model as tpc_model
  from recoil_jax.ops import sparse
  from recoil_jax.ops.sparse import kernel_map as km
  from recoil_jax.ops.sparse import reference
  from recoil_jax.ops.sparse.pallas import conv, dispatch, maxpool, rulebook
  from recoil_jax.ops.sparse.pallas import hash as hashing

  rows = []
  batch = coords.shape[0]
  rng = np.random.default_rng(0)
  st = sparse.from_padded_voxels(jnp.asarray(coords), jnp.asarray(charges[..., None]),
                                 jnp.asarray(num), (GRID,) * 3)

  # Hash table: concurrent inserts of keys with many duplicates, in two orders -> identical tables.
  cand = rulebook.candidate_keys(st.coords, batch, (6,) * 3, (2,) * 3, (0,) * 3, (1,) * 3,
                                 km.conv_output_shape((GRID,) * 3, (6,) * 3, (2,) * 3, (0,) * 3, (1,) * 3))
  bits = hashing.table_bits(cand.shape[0])
  t1 = np.asarray(hashing.insert_keys(cand, bits=bits, interpret=interpret))
  t2 = np.asarray(hashing.insert_keys(cand[::-1], bits=bits, interpret=interpret))
  c = np.asarray(cand)
  same_set = np.array_equal(np.sort(t1[t1 != hashing.EMPTY]), np.unique(c[c != hashing.EMPTY]))
  rows.append(("hash: distinct keys stored once", 0.0 if same_set else 1.0, 0.0, same_set))
  rows.append(("hash: table independent of insert order", float(np.sum(t1 != t2)), 0.0,
               bool(np.array_equal(t1, t2))))

  with jax.default_matmul_precision("highest"):
    h = st
    for i, ((kind, feats, k, s), cap) in enumerate(zip(tpc_model.TRUNKS["paper"][:max_layers], caps)):
      geometry = (h.coords, h.spatial_shape, batch, (k,) * 3, (s,) * 3, (0,) * 3, (1,) * 3, cap * batch)
      want = km.build_conv_map(*geometry, build_in_map=True)
      got = rulebook.build_conv_map(*geometry, build_in_map=True, interpret=interpret)
      bad = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in zip(
          jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)))
      rows.append((f"rulebook layer {i} ({LAYER_NAMES[i]}): differing entries", float(bad), 0.0, bad == 0))
      x = jnp.asarray(rng.normal(size=(h.capacity, h.num_channels)), jnp.float32)
      x = jnp.where(h.mask[:, None], x, 0)
      if kind == "conv":
        w = jnp.asarray(rng.normal(size=(k ** 3, h.num_channels, feats)) / np.sqrt(k ** 3 * h.num_channels),
                        jnp.float32)
        g = jnp.asarray(rng.normal(size=(cap * batch, feats)), jnp.float32)
        f_p = lambda x, w: jnp.sum(conv.conv_features(x, w, want.out_map, want.in_map, interpret) * g)  # noqa: E731
        f_x = lambda x, w: jnp.sum(reference.gather_matmul(x, want.out_map, w) * g)  # noqa: E731
        y_p = conv.conv_features(x, w, want.out_map, want.in_map, interpret)
        y_x = reference.gather_matmul(x, want.out_map, w)
        rows.append((f"conv layer {i} forward (rel. to max)", _rel(y_p, y_x), 1e-5, _rel(y_p, y_x) <= 1e-5))
        gp, gx = jax.grad(f_p, (0, 1))(x, w), jax.grad(f_x, (0, 1))(x, w)
        for name, a, b in zip(("dX", "dW"), gp, gx):
          rows.append((f"conv layer {i} {name} (rel. to max)", _rel(a, b), 1e-5, _rel(a, b) <= 1e-5))
        xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
        y_b = conv.conv_features(xb, wb, want.out_map, want.in_map, interpret)
        scale = reference.gather_matmul(jnp.abs(x), want.out_map, jnp.abs(w))
        # bf16 (8-bit significand, unit roundoff 2^-8): two input roundings per product, one output
        # rounding; float32 accumulation adds ~nothing (see tests/test_sparse_pallas.py).
        ratio = float(np.max(np.abs(np.asarray(y_b, np.float32) - np.asarray(y_x))
                             / (1.01 * 2 ** -7 * np.asarray(scale) + 2 ** -8 * np.abs(np.asarray(y_x)) + 1e-6)))
        rows.append((f"conv layer {i} bf16 forward (error / dtype bound)", ratio, 1.0, ratio <= 1.0))
        h = sparse.SparseTensor(coords=want.out_coords, features=jax.nn.relu(y_x),
                                spatial_shape=km.conv_output_shape(h.spatial_shape, (k,) * 3, (s,) * 3,
                                                                   (0,) * 3, (1,) * 3),
                                batch_size=batch, overflow=h.overflow + want.overflow)
      else:
        g = jnp.asarray(rng.normal(size=(cap * batch, h.num_channels)), jnp.float32)
        y_p = maxpool.max_pool_features(x, want.out_map, want.in_map, interpret)
        y_x = reference.gather_max(x, want.out_map)
        rows.append((f"pool layer {i} forward (max abs diff)", float(np.max(np.abs(np.asarray(y_p) - np.asarray(y_x)))),
                     0.0, bool(np.array_equal(np.asarray(y_p), np.asarray(y_x)))))
        gp = jax.grad(lambda x: jnp.sum(maxpool.max_pool_features(x, want.out_map, want.in_map, interpret) * g))(x)
        gx = jax.grad(lambda x: jnp.sum(reference.gather_max(x, want.out_map) * g))(x)
        rows.append((f"pool layer {i} dX (rel. to max)", _rel(gp, gx), 1e-6, _rel(gp, gx) <= 1e-6))
        h = sparse.SparseTensor(coords=want.out_coords, features=y_x,
                                spatial_shape=km.conv_output_shape(h.spatial_shape, (k,) * 3, (s,) * 3,
                                                                   (0,) * 3, (1,) * 3),
                                batch_size=batch, overflow=h.overflow + want.overflow)
      if int(want.overflow):
        rows.append((f"layer {i} capacity overflow", float(want.overflow), 0.0, False))

    # The whole trunk: parameter gradients with each backend.
    trunk = tpc_model.SparseTrunk(tpc_model.TRUNKS["paper"], capacity_per_event=tuple(caps))
    args = (jnp.asarray(coords), jnp.asarray(charges), jnp.asarray(num))
    params = trunk.init(jax.random.key(0), *args)
    gd = jnp.asarray(rng.normal(size=(batch, 12 ** 3 * 20)), jnp.float32)
    loss = lambda p: jnp.sum(trunk.apply(p, *args)[0] * gd)  # noqa: E731
    with dispatch.use_backend("pallas", interpret=interpret):
      gp = jax.grad(loss)(params)
    with dispatch.use_backend("xla"):
      gx = jax.grad(loss)(params)
    err = max(_rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(gp), jax.tree_util.tree_leaves(gx)))
    rows.append(("paper trunk parameter gradients (worst rel. to max)", err, 1e-4, err <= 1e-4))
  return rows


# ---------------------------------------------------------------------------------------------------
# Sections 3-4: timings.

def dense_layers(batch_dense, trunk_params):
  """The trunk as dense NDHWC lax convolutions / reduce_window max pools (cuDNN on a GPU)."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  from recoil_jax.studies.tpc import model as tpc_model
  x = batch_dense
  for i, (kind, _, k, s) in enumerate(tpc_model.TRUNKS["paper"]):
    if kind == "conv":
      p = trunk_params[f"conv{i}"]
      x = lax.conv_general_dilated(x, p["kernel"], (s,) * 3, "VALID",
                                   dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
      x = jax.nn.relu(x + p["bias"])
    else:
      x = lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, k, 1), (1, s, s, s, 1), "VALID")
  return x


def time_network(coords, charges, num, labels, caps, repeats, interpret, budget, results):
  """Whole network (trunk + cosine head) fwd and fwd+bwd: pallas, xla, dense."""
  import jax
  import jax.numpy as jnp
  from recoil_jax.losses import direction as direction_losses
  from recoil_jax.nn import direction_heads
  from recoil_jax.studies.tpc import model as tpc_model
  from recoil_jax.ops.sparse.pallas import dispatch

  batch = coords.shape[0]
  model = tpc_model.TpcDirectionNet(trunk="paper", head="cosine", capacity_per_event=tuple(caps))
  inputs = {"coords": jnp.asarray(coords), "charges": jnp.asarray(charges),
            "num_voxels": jnp.asarray(num)}
  y = jnp.asarray(labels)
  with dispatch.use_backend("xla"):
    params = model.init(jax.random.key(0), inputs)

  def sparse_fns(backend):
    """Compiled forward (all outputs) and gradient; the backend is fixed when they are traced."""
    with dispatch.use_backend(backend, interpret=interpret):
      fwd = jax.jit(model.apply).trace(params, inputs).lower().compile()
      loss = lambda p, b: direction_losses.cosine_similarity_loss(model.apply(p, b)["pred_direction"], y).mean()  # noqa: E731
      bwd = jax.jit(jax.grad(loss)).trace(params, inputs).lower().compile()
    return fwd, bwd, int(fwd(params, inputs)["overflow"][0])

  # Dense: same trunk as dense convolutions, then the same head on the flattened 12³×20 features.
  dense_in = np.zeros((batch, GRID, GRID, GRID, 1), np.float32)
  for i in range(batch):
    c = coords[i, :num[i]]
    dense_in[i, c[:, 0], c[:, 1], c[:, 2], 0] = charges[i, :num[i]]
  dense_in = jnp.asarray(dense_in)
  tp = params["params"]

  def dense_forward(p, x):
    h = dense_layers(x, p["trunk"]).reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["shared"]["kernel"] + p["shared"]["bias"])
    return direction_heads.DirectionHead().apply({"params": p["direction"]}, h)

  rows = []
  for impl in ("pallas", "xla", "dense"):
    if budget.left() < 30:
      rows.append((batch, impl, None, None, "skipped (budget)"))
      continue
    try:
      if impl == "dense":
        fwd = jax.jit(dense_forward)
        bwd = jax.jit(jax.grad(lambda p, x: direction_losses.cosine_similarity_loss(dense_forward(p, x), y).mean()))
        t_f, c_f = timeit(lambda: fwd(tp, dense_in), repeats)
        t_b, c_b = timeit(lambda: bwd(tp, dense_in), repeats)
        note = ""
      else:
        t0 = time.perf_counter()
        fwd, bwd, overflow = sparse_fns(impl)
        compile_s = time.perf_counter() - t0
        t_f, _ = timeit(lambda: fwd(params, inputs), repeats)
        t_b, _ = timeit(lambda: bwd(params, inputs), repeats)
        note = f"compile {compile_s:.1f} s" + (f"; OVERFLOW {overflow}" if overflow else "")
      rows.append((batch, impl, t_f, t_b, note))
    except Exception as e:  # noqa: BLE001 -- an OOM or a compile failure is a result too
      rows.append((batch, impl, None, None, _short_error(e)))
      traceback.print_exc()
    print(f"  network batch {batch} {impl}: fwd {_ms(rows[-1][2])} ms, fwd+bwd {_ms(rows[-1][3])} ms "
          f"{rows[-1][4]}", flush=True)
  results.setdefault("network", []).extend(
      dict(zip(("batch", "impl", "forward_s", "forward_backward_s", "note"), r)) for r in rows)
  return rows


def time_layers(coords, charges, num, caps, repeats, interpret, budget, results, max_layers=5):
  """Each trunk layer alone: map + compute, fwd and fwd+bwd; rulebook alone; dense conv."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  from recoil_jax.studies.tpc import model as tpc_model
  from recoil_jax.ops import sparse
  from recoil_jax.ops.sparse import kernel_map as km
  from recoil_jax.ops.sparse.pallas import dispatch, rulebook

  batch = coords.shape[0]
  rng = np.random.default_rng(1)
  st = sparse.from_padded_voxels(jnp.asarray(coords), jnp.asarray(charges[..., None]),
                                 jnp.asarray(num), (GRID,) * 3)
  rows = []
  for i, ((kind, feats, k, s), cap) in enumerate(zip(tpc_model.TRUNKS["paper"][:max_layers], caps)):
    cap_rows = cap * batch
    c_in = st.num_channels
    ks, ss = (k,) * 3, (s,) * 3
    geometry = (st.coords, st.spatial_shape, batch, ks, ss, (0,) * 3, (1,) * 3, cap_rows)
    kmap = km.build_conv_map(*geometry)
    pairs = int(jnp.sum(kmap.out_map >= 0))
    flops = 2.0 * pairs * c_in * feats if kind == "conv" else 0.0
    out_grid = km.conv_output_shape(st.spatial_shape, ks, ss, (0,) * 3, (1,) * 3)
    dense_flops = 2.0 * batch * np.prod(out_grid) * k ** 3 * c_in * feats if kind == "conv" else 0.0
    if kind == "conv":
      w = jnp.asarray(rng.normal(size=ks + (c_in, feats)) / np.sqrt(k ** 3 * c_in), jnp.float32)
      b = jnp.zeros((feats,), jnp.float32)
    x0 = st.features

    def layer(x, w=None, b=None, backend="xla"):
      s_in = st.replace(features=x)
      kw = dict(strides=s, out_capacity=cap_rows, backend=backend, interpret=interpret and backend == "pallas")
      if kind == "conv":
        return dispatch.sparse_conv(s_in, w, b, **kw).features
      return dispatch.sparse_max_pool(s_in, k, **kw).features

    # fwd+bwd differentiates the weights, and the input features except for the first layer
    # (whose input is data), as in training.
    wrt = (1,) if i == 0 else (0, 1)
    variants = []
    for backend in ("pallas", "xla"):
      if kind == "conv":
        f = jax.jit(lambda x, w, b, be=backend: layer(x, w, b, be))
        g = jax.jit(jax.grad(lambda x, w, b, be=backend: jnp.sum(jnp.sin(layer(x, w, b, be))), wrt))
        variants.append((backend, lambda f=f: f(x0, w, b), lambda g=g: g(x0, w, b)))
      else:
        f = jax.jit(lambda x, be=backend: layer(x, backend=be))
        g = jax.jit(jax.grad(lambda x, be=backend: jnp.sum(jnp.sin(layer(x, backend=be)))))
        variants.append((backend, lambda f=f: f(x0), lambda g=g: g(x0)))
    if kind == "conv":
      xd = jnp.asarray(rng.random((batch,) + tuple(st.spatial_shape) + (c_in,)) < 0.01, jnp.float32)
      dconv = lambda x, w: lax.conv_general_dilated(x, w, ss, "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))  # noqa: E731
      fd = jax.jit(dconv)
      gd = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(dconv(x, w))), wrt))
      variants.append(("dense", lambda: fd(xd, w), lambda: gd(xd, w)))
    rb_p = jax.jit(lambda c: rulebook.build_conv_map(c, *geometry[1:], build_in_map=True, interpret=interpret))
    rb_x = jax.jit(lambda c: km.build_conv_map(c, *geometry[1:]))
    variants.append(("rulebook pallas", lambda: rb_p(st.coords), None))
    variants.append(("rulebook xla", lambda: rb_x(st.coords), None))
    for name, fwd, bwd in variants:
      if budget.left() < 20:
        rows.append((batch, i, name, pairs, None, None, flops, dense_flops, "skipped (budget)"))
        continue
      try:
        t_f, _ = timeit(fwd, repeats)
        t_b = timeit(bwd, repeats)[0] if bwd is not None else None
        rows.append((batch, i, name, pairs, t_f, t_b, flops, dense_flops, ""))
      except Exception as e:  # noqa: BLE001
        rows.append((batch, i, name, pairs, None, None, flops, dense_flops, _short_error(e)))
        traceback.print_exc()
      r = rows[-1]
      print(f"  layer {i} batch {batch} {name}: fwd {_ms(r[4])} ms, fwd+bwd {_ms(r[5])} ms {r[8]}",
            flush=True)
    # Next layer's input: the XLA path's output (ReLU after convs, as in the trunk).
    s_kw = dict(strides=s, out_capacity=cap_rows, backend="xla")
    if kind == "conv":
      st = dispatch.sparse_conv(st, w, b, **s_kw).map_features(jax.nn.relu)
    else:
      st = dispatch.sparse_max_pool(st, k, **s_kw)
  keys = ("batch", "layer", "impl", "pairs", "forward_s", "forward_backward_s", "flops_active",
          "flops_dense", "note")
  results.setdefault("layers", []).extend(dict(zip(keys, r)) for r in rows)
  return rows


# ---------------------------------------------------------------------------------------------------
# Section "selfcheck": the check that guards backend="auto" (recoil_jax/ops/sparse/pallas/selfcheck.py).

def run_selfcheck_section(results: dict) -> None:
  """The self-check as the first ``"auto"`` resolution on this device runs it (Pallas interpreter
  off a GPU), and what ``"auto"`` then resolves to."""
  import dataclasses
  from recoil_jax.ops.sparse.pallas import dispatch, selfcheck
  status = selfcheck.pallas_status(run=True)
  auto = dispatch.resolve_backend("auto", where="gpu_sparse_check")[0]
  results["selfcheck"] = {
      "ok": status.ok, "skipped": status.skipped, "device": status.device,
      "interpret": status.interpret, "seconds": status.seconds, "error": status.error,
      "traceback": status.traceback, "auto_backend": auto,
      "rows": [dataclasses.asdict(r) for r in status.rows]}
  print(f"  {status.summary()}; backend='auto' -> {auto!r}", flush=True)
  if status.traceback:
    print(status.traceback, flush=True)


# ---------------------------------------------------------------------------------------------------
# Section "uresnet": the SBND multi-plane UResNet (recoil_jax/studies/sbnd/model.py), JAX through
# scripts/bench_uresnet.py's worker (same inputs, loss and RMSProp step), against the CosmicTagger
# PyTorch network (bench_uresnet.torch_uresnet, with Table 1's choices).


def torch_uresnet_worker(spec: dict) -> dict:
  """PyTorch peer timings (run in a subprocess before JAX claims the GPU's memory)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_uresnet  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
  elif spec["allow_cpu"]:
    device = torch.device("cpu")
  else:
    return {"skipped": f"torch {torch.__version__} has no CUDA device"}
  end = time.perf_counter() + spec["budget_s"]
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  net = bench_uresnet.torch_uresnet(**spec["model"]).to(device)
  out = {"torch": torch.__version__, "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
         "parameters": sum(p.numel() for p in net.parameters()),
         "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None,
         "rows": []}
  weights = torch.tensor(bench_uresnet.CLASS_WEIGHTS, device=device)
  opt = torch.optim.RMSprop(net.parameters(), lr=3e-4, alpha=0.99, eps=1e-8)

  def train_step(x, y):
    opt.zero_grad(set_to_none=True)
    loss = bench_uresnet._torch_weighted_loss(net(x), y, weights)  # pylint: disable=protected-access
    loss.backward()
    opt.step()
    return loss

  for h, w_, batch, mode in spec["runs"]:
    row = {"size": [h, w_], "batch": batch, "mode": mode}
    if time.perf_counter() > end - 5:
      row["note"] = "skipped (budget)"
      out["rows"].append(row)
      continue
    try:
      images, labels = bench_uresnet._inputs(batch, h, w_)  # pylint: disable=protected-access
      x = torch.from_numpy(images).to(device)
      y = torch.from_numpy(labels).long().to(device)
      if mode == "forward":
        net.eval()
        def fn():
          with torch.no_grad():
            net(x)
      else:
        net.train()
        fn = lambda: train_step(x, y)  # noqa: E731
      t0 = time.perf_counter()
      fn()
      sync()
      row["first_call_s"] = time.perf_counter() - t0
      times = []
      for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > end - 5:
          break
      row["step_s"] = float(np.median(times))
    except Exception as e:  # noqa: BLE001 -- an OOM is a result too
      row["note"] = _short_error(e)
    out["rows"].append(row)
    print("ROW " + json.dumps(row), flush=True)  # kept if the parent's timeout ends this process
    if device.type == "cuda":
      torch.cuda.empty_cache()
  return out


def run_torch_peer(spec: dict, timeout_s: float) -> dict:
  """`torch_uresnet_worker` in a child process (its GPU memory is gone when it exits)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  cmd = [sys.executable, os.path.abspath(__file__), "--torch-uresnet-worker", json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 10))
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    rows = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
    return {"error": f"timed out after {timeout_s:.0f} s", "rows": rows}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


def uresnet_runs(sizes, batches) -> list[tuple[int, int, int, str]]:
  return [(h, w, b, mode) for h, w in sizes for b in batches for mode in ("forward", "train")]


def time_uresnet(model: dict, runs, repeats: int, budget: Budget, torch_result: dict | None,
                 results: dict) -> None:
  """JAX UResNet forward / train step (bench_uresnet.worker_single) for every run; peer rows
  from the PyTorch subprocess."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_uresnet  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import model as uresnet  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  net = uresnet.UResNet(**model)
  side = 2 ** net.depth
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 3, side, side)), train=False))
  info = {"model": model, "parameters": uresnet.parameter_count(shapes),
          "torch": {k: v for k, v in (torch_result or {}).items() if k != "rows"}, "rows": []}
  peer = {(tuple(r["size"]), r["batch"], r["mode"]): r for r in (torch_result or {}).get("rows", [])}
  for h, w, batch, mode in runs:
    row = {"size": [h, w], "batch": batch, "mode": mode, "torch": peer.get(((h, w), batch, mode))}
    if budget.left() < 20:
      row["note"] = "skipped (budget)"
    else:
      spec = {"model": model, "dtype": "float32", "size": (h, w), "batch": batch, "mode": mode,
              "repeats": repeats, "budget_s": max(1.0, min(15.0, budget.left() / 4))}
      try:
        row.update(bench_uresnet.worker_single(spec))
      except Exception as e:  # noqa: BLE001 -- an OOM or a compile failure is a result too
        row["note"] = _short_error(e)
        traceback.print_exc()
    info["rows"].append(row)
    t = row.get("torch") or {}
    print(f"  uresnet {h}x{w} batch {batch} {mode}: JAX {_ms(row.get('step_s'))} ms "
          f"(compile {row.get('compile_s', float('nan')):.1f} s), torch {_ms(t.get('step_s'))} ms "
          f"{row.get('note', '')}", flush=True)
  results["uresnet"] = info


# ---------------------------------------------------------------------------------------------------
# Section "sphere": S²→SO(3) and SO(3)→SO(3) layers (recoil_jax/ops/sphere/layers.py), timed, and
# checked against the direct quadrature of recoil_jax/ops/sphere/reference.py where it fits.

REF_CHANNELS = 2  # input and output channels of the reference comparison (its cost is ∝ C_in·C_out)
REF_CHUNK = 16  # output rotations per block of reference.so3_to_so3
REF_NS_PER_TERM = {"s2": 80.0, "so3": 40.0}  # host cost per term, measured on a 2-core CPU (×1.2)


def sphere_reference_cost(kind: str, L: int, n: int) -> tuple[float, float]:
  """(bytes, seconds) the float64 direct quadrature needs at band-limit L, directional n (dh grid):
  the S² reference holds all Y_ℓm at Q×P point pairs, the SO(3) one Wigner D at REF_CHUNK×P."""
  p_s2 = 2 * L * (2 * L - 1)
  q = (2 * n - 1) * p_s2
  cc = REF_CHANNELS * REF_CHANNELS
  if kind == "s2":
    terms = q * p_s2 * L * (2 * L - 1)
    return q * p_s2 * (16.0 * L * (2 * L - 1) + 32 * cc + 64), terms * REF_NS_PER_TERM["s2"] * 1e-9
  terms = q * q * L * (2 * L - 1) ** 2
  return REF_CHUNK * q * (40.0 * L * (2 * L - 1) ** 2 + 32 * cc + 96), terms * REF_NS_PER_TERM["so3"] * 1e-9


def _sphere_module_and_input(kind: str, L: int, n: int, batch: int, c_in: int, c_out: int, rng,
                             band_limited: bool):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, layers, wigner  # pylint: disable=g-import-not-at-top
  if kind == "s2":
    module = layers.S2ToSO3Conv(c_out, L_out=L, N=n)
    g = grids.s2fft_grid(L, "dh")
    if band_limited:  # as tests/test_sphere_layers.py: float64 synthesis of random coefficients
      t, p = np.meshgrid(g.thetas, g.phis, indexing="ij")
      x = np.stack([np.stack([wigner.s2_synthesis(wigner.random_flm(rng, L), t, p).real
                              for _ in range(c_in)], -1) for _ in range(batch)])
    else:
      x = rng.normal(size=(batch,) + g.shape + (c_in,))
  else:
    module = layers.SO3ToSO3Conv(c_out, L_out=L, N_out=n)
    g = grids.so3_grid(L, n, "dh")
    if band_limited:
      e = g.euler_angles()
      x = np.stack([np.stack([wigner.so3_synthesis(wigner.random_flmn(rng, L, n), e[..., 0], e[..., 1],
                                                   e[..., 2]).real for _ in range(c_in)], -1)
                    for _ in range(batch)])
    else:
      x = rng.normal(size=(batch,) + g.shape + (c_in,))
  return module, jnp.asarray(x, jnp.float32)


def sphere_reference_error(kind: str, L: int, n: int, seed: int) -> dict:
  """max |layer − quadrature| / max |quadrature| at JAX's default and at HIGHEST matmul precision."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import layers, reference  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  module, x = _sphere_module_and_input(kind, L, n, 1, REF_CHANNELS, REF_CHANNELS, rng, True)
  v = module.init(jax.random.key(seed), x)
  v = {"params": {**v["params"], "bias": jnp.asarray(rng.normal(size=REF_CHANNELS), jnp.float32)}}
  kernel = np.asarray(v["params"]["kernel"])
  bias = np.asarray(v["params"]["bias"])
  t0 = time.perf_counter()
  if kind == "s2":
    kernel = kernel * layers._ell_mask(L, (n,))[..., None, None]  # pylint: disable=protected-access
    ref = reference.s2_to_so3(np.asarray(x), kernel, bias, L_out=L, N=n)
  else:
    kernel = kernel * layers._ell_mask(L, (n, n))[..., None, None]  # pylint: disable=protected-access
    ref = reference.so3_to_so3(np.asarray(x), kernel, bias, L_out=L, N_out=n, chunk=REF_CHUNK)
  out = {"reference_s": time.perf_counter() - t0}
  for name, precision in (("default", None), ("highest", "highest")):
    with jax.default_matmul_precision(precision):
      fast = np.asarray(jax.jit(module.apply)(v, x), np.float64)
    out[f"rel_error_{name}"] = float(np.max(np.abs(fast - ref)) / np.max(np.abs(ref)))
  return out


def time_sphere(ls, ref_ls, n_max: int, batch: int, repeats: int, budget: Budget, results: dict,
                ref_gib: float, ref_max_s: float, seed: int) -> None:
  """Forward and forward+backward (params and input) of each layer at every L of ``ls``; the
  reference comparison at every L of ``ls`` and ``ref_ls`` where it fits (memory, time)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  channels = {"s2": (2, 16), "so3": (16, 16)}
  names = {"s2": "S²→SO(3)", "so3": "SO(3)→SO(3)"}
  rows = []
  for L in sorted(set(ls) | set(ref_ls)):
    n = min(n_max, L)
    for kind in ("s2", "so3"):
      c_in, c_out = channels[kind]
      row = {"layer": names[kind], "L": L, "N": n, "batch": batch, "c_in": c_in, "c_out": c_out,
             "timed": L in ls, "note": ""}
      rows.append(row)
      if budget.left() < 15:
        row["note"] = "skipped (budget)"
        continue
      try:
        if L in ls:
          rng = np.random.default_rng(seed + L)
          module, x = _sphere_module_and_input(kind, L, n, batch, c_in, c_out, rng, False)
          t0 = time.perf_counter()
          v = jax.jit(module.init)(jax.random.key(seed), x)
          fwd = jax.jit(module.apply).lower(v, x).compile()
          loss = lambda v, x, m=module: jnp.sum(jnp.square(m.apply(v, x)))  # noqa: E731
          bwd = jax.jit(jax.grad(loss, (0, 1))).lower(v, x).compile()
          row["setup_s"] = time.perf_counter() - t0  # s2fft kernels (host, float64) + compiles
          row["forward_s"], _ = timeit(lambda: fwd(v, x), repeats)
          row["forward_backward_s"], _ = timeit(lambda: bwd(v, x), repeats)
        mem, secs = sphere_reference_cost(kind, L, n)
        row["reference_gib"], row["reference_est_s"] = mem / 2 ** 30, secs
        if mem > ref_gib * 2 ** 30:
          row["note"] = f"reference needs ~{mem / 2 ** 30:.3g} GiB (limit {ref_gib:g})"
        elif secs > min(ref_max_s, budget.left() / 2):
          row["note"] = f"reference needs ~{secs:.3g} s (limit {min(ref_max_s, budget.left() / 2):.0f})"
        else:
          row.update(sphere_reference_error(kind, L, n, seed))
          row["ok"] = row["rel_error_highest"] <= SPHERE_TOL
      except Exception as e:  # noqa: BLE001 -- an OOM or a compile failure is a result too
        row["note"] = _short_error(e)
        traceback.print_exc()
      print(f"  sphere {row['layer']} L={L} N={n}: fwd {_ms(row.get('forward_s'))} ms, fwd+bwd "
            f"{_ms(row.get('forward_backward_s'))} ms, ref. error "
            f"{row.get('rel_error_default', float('nan')):.2g} (default) / "
            f"{row.get('rel_error_highest', float('nan')):.2g} (HIGHEST) {row['note']}", flush=True)
  results["sphere"] = rows


# ---------------------------------------------------------------------------------------------------
# Report.

def print_report(results: dict) -> None:
  print()
  print(f"## Sparse conv check — {results['device']} (jax {results['jax']}), simulated 50 keV tracks")
  sc = results.get("selfcheck")
  if sc:
    verdict = "skipped" if sc["skipped"] else ("passed" if sc["ok"] else "**FAILED**")
    print(f"\n### Self-check behind backend='auto' ({sc['device']}"
          f"{', Pallas interpreter' if sc['interpret'] else ''}): {verdict} in {sc['seconds']:.1f} s; "
          f"'auto' resolves to {sc['auto_backend']!r}")
    if sc["error"]:
      print(f"\nraised: `{sc['error']}`")
    if sc["rows"]:
      print("\n| comparison | max abs diff | rel. to max | error / float32 bound | ok |\n|---|---|---|---|---|")
      for r in sc["rows"]:
        print(f"| {r['name']} | {r['max_abs']:.3g} | {r['max_rel']:.3g} | {r['ratio']:.3g} | "
              f"{'yes' if r['ok'] else '**NO**'} |")
  if "checks" in results:
    print("\n| check | error | tolerance | ok |\n|---|---|---|---|")
    for c in results["checks"]:
      print(f"| {c['check']} | {c['error']:.3g} | {c['tolerance']:.3g} | {'yes' if c['ok'] else '**NO**'} |")
  rates = results.get("matmul_tflops", {})
  if rates:
    print("\n| matmul (measured) | TFLOP/s |\n|---|---|")
    for k, v in rates.items():
      print(f"| {k} | {v:.3g} |")
  if "network" in results:
    print("\n| batch | implementation | forward ms | fwd+bwd ms | fwd events/s | fwd speed-up vs XLA | "
          "fwd speed-up vs dense | note |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r["batch"], r["impl"]): r for r in results["network"]}
    for r in results["network"]:
      xla, dense = by.get((r["batch"], "xla")), by.get((r["batch"], "dense"))
      f = r["forward_s"]
      ratio = lambda o: (f"{o['forward_s'] / f:.2f}×" if f and o and o["forward_s"] else "—")  # noqa: E731
      eps = f"{r['batch'] / f:.0f}" if f else "—"
      print(f"| {r['batch']} | {r['impl']} | {_ms(f)} | {_ms(r['forward_backward_s'])} | {eps} | "
            f"{ratio(xla)} | {ratio(dense)} | {r['note']} |")
  if "layers" in results:
    fp32 = rates.get("fp32 HIGHEST")
    print(f"\n| batch | layer | implementation | pairs | forward ms | fwd+bwd ms | GFLOP active (dense) | "
          f"fwd TFLOP/s at active sites | % fp32 rate | % {BF16_PEAK_TFLOPS:.0f} bf16 | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["layers"]:
      f = r["forward_s"]
      rate = r["flops_active"] / f / 1e12 if f and r["flops_active"] and "rulebook" not in r["impl"] else None
      if r["impl"] == "dense" and f:
        rate = r["flops_dense"] / f / 1e12
      pct = f"{100 * rate / fp32:.3g}" if rate and fp32 else "—"
      pct16 = f"{100 * rate / BF16_PEAK_TFLOPS:.3g}" if rate else "—"
      gf = f"{r['flops_active'] / 1e9:.3g} ({r['flops_dense'] / 1e9:.3g})" if r["flops_active"] else "—"
      print(f"| {r['batch']} | {r['layer']} {LAYER_NAMES[r['layer']]} | {r['impl']} | {r['pairs']} | "
            f"{_ms(f)} | {_ms(r['forward_backward_s'])} | {gf} | "
            f"{'—' if rate is None else f'{rate:.3g}'} | {pct} | {pct16} | {r['note']} |")
  if "network" in results or "layers" in results:
    print("\nSparse rows include the rulebook; Pallas float32 products are IEEE fp32 (HIGHEST), the "
          "XLA and dense rows use JAX's default matmul precision. Dense FLOPs (in parentheses) are "
          "for the full grid, and the dense rows' TFLOP/s use them. Simulated tracks.")
  un = results.get("uresnet")
  if un:
    t = un["torch"]
    tf32 = {None: "", True: "; cuDNN TF32 on", False: "; cuDNN TF32 off"}[t.get("tf32_conv")]
    peer = (f"PyTorch {t['torch']} on {t['device']} ({t['parameters']:,} parameters{tf32})"
            if "parameters" in t
            else f"PyTorch peer: {t.get('skipped') or t.get('error') or 'not run'}")
    print(f"\n### SBND UResNet ({un['parameters']:,} parameters, model overrides {un['model'] or 'none'}), "
          f"3 planes, float32; {peer}")
    print("\n| H×W | batch | step | JAX ms | JAX compile s | JAX TFLOP/s (analytic) | events/s | "
          "PyTorch ms | JAX / PyTorch | note |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in un["rows"]:
      tr = r.get("torch") or {}
      f, ft = r.get("step_s"), tr.get("step_s")
      cells = [f"{r['size'][0]}×{r['size'][1]}", r["batch"],
               "forward" if r["mode"] == "forward" else "fwd+bwd+RMSProp", _ms(f),
               f"{r['compile_s']:.1f}" if "compile_s" in r else "—",
               f"{r['analytic_flops'] / f / 1e12:.3g}" if f and r.get("analytic_flops") else "—",
               f"{r['batch'] / f:.3g}" if f else "—", _ms(ft),
               f"{f / ft:.3g}" if f and ft else "—",
               "; ".join(x for x in (r.get("note", ""), tr.get("note", "")) if x)]
      print("| " + " | ".join(str(c) for c in cells) + " |")
    print("\nJAX through scripts/bench_uresnet.py's worker (train step: light-weighted cross entropy, "
          "RMSProp, train-mode BatchNorm); analytic FLOPs are the convolutions' (a train step counts "
          "3× forward). Both frameworks at their default float32 conv precision. Random sparse images.")
  sph = results.get("sphere")
  if sph:
    print("\n### Spherical layers (dh grids, s2fft precomputed kernels), float32")
    print(f"\n| layer | L | N | batch | C_in→C_out | forward ms | fwd+bwd ms | setup s | "
          f"ref. error, default precision | ref. error, HIGHEST (tol {SPHERE_TOL:g}) | reference s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sph:
      timed = "setup_s" in r
      ok = "" if "ok" not in r else (" ✓" if r["ok"] else " **NO**")
      cells = [r["layer"], r["L"], r["N"], r["batch"] if timed else "—",
               f"{r['c_in']}→{r['c_out']}" if timed else "—", _ms(r.get("forward_s")),
               _ms(r.get("forward_backward_s")), f"{r['setup_s']:.1f}" if timed else "—",
               f"{r['rel_error_default']:.2g}" if "rel_error_default" in r else "—",
               (f"{r['rel_error_highest']:.2g}" + ok) if "rel_error_highest" in r else "—",
               f"{r['reference_s']:.1f}" if "reference_s" in r else "—", r["note"]]
      print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"\nReference: recoil_jax/ops/sphere/reference.py (float64 direct quadrature on the host, "
          f"band-limited random inputs, batch 1, {REF_CHANNELS}→{REF_CHANNELS} channels), run only "
          f"where its memory and time estimates fit. Forward+backward differentiates the filters and "
          f"the input of sum(out²).")


# ---------------------------------------------------------------------------------------------------

def _sizes(text: str) -> list[tuple[int, int]]:
  return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cpu-dry-run", action="store_true",
                 help="tiny run on CPU with the Pallas interpreter (checks the script, times nothing)")
  p.add_argument("--batches", default="64,256", help="comma-separated batch sizes for the timings")
  p.add_argument("--check-batch", type=int, default=8, help="events in the correctness checks")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"any of {', '.join(SECTIONS)} (comma-separated; they run in that order)")
  p.add_argument("--layer-batches", default="256,64", help="batch sizes of the per-layer timings")
  p.add_argument("--budget-s", type=float, default=None,
                 help="stop starting new work after this many seconds, shared by the sections in "
                      "proportion to SECTION_WEIGHTS (default 540; 3600 dry run)")
  p.add_argument("--uresnet-sizes", default="640x1024,128x256", help="per-plane H×W list")
  p.add_argument("--uresnet-batches", default="1,8")
  p.add_argument("--uresnet-model", type=json.loads, default={},
                 help='UResNet overrides as JSON (default: Table 1), e.g. \'{"initial_filters": 16}\'')
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch UResNet peer")
  p.add_argument("--sphere-ls", default="16,32,64", help="band-limits of the spherical-layer timings")
  p.add_argument("--sphere-ref-ls", default="6,8",
                 help="extra band-limits for the direct-quadrature comparison only")
  p.add_argument("--sphere-n", type=int, default=3, help="directional band-limit N (≤ L)")
  p.add_argument("--sphere-batch", type=int, default=8)
  p.add_argument("--sphere-ref-gib", type=float, default=8.0,
                 help="host memory the direct-quadrature reference may use")
  p.add_argument("--sphere-ref-max-s", type=float, default=30.0,
                 help="estimated seconds one reference evaluation may take")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="JSON results file (written atomically)")
  p.add_argument("--torch-uresnet-worker", help=argparse.SUPPRESS)
  args = p.parse_args()

  if args.torch_uresnet_worker:  # child process of run_torch_peer; never imports jax
    print("RESULT " + json.dumps(torch_uresnet_worker(json.loads(args.torch_uresnet_worker))),
          flush=True)
    return 0

  sections = [s for s in args.sections.split(",") if s]
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise SystemExit(f"--sections: unknown section(s) {sorted(unknown)}; known: {SECTIONS}")
  sections = [s for s in SECTIONS if s in sections]
  if args.budget_s is None:
    args.budget_s = 3600.0 if args.cpu_dry_run else 540.0
  budget = Budget(args.budget_s)
  batches, layer_batches = _ints(args.batches), _ints(args.layer_batches)
  repeats = args.repeats
  voxel_cap, max_layers = None, 5
  uresnet_model = dict(args.uresnet_model)
  uresnet_sizes, uresnet_batches = _sizes(args.uresnet_sizes), _ints(args.uresnet_batches)
  sphere_ls, sphere_ref_ls = _ints(args.sphere_ls), _ints(args.sphere_ref_ls)
  sphere_batch = args.sphere_batch
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_uresnet  # pylint: disable=g-import-not-at-top
  if args.cpu_dry_run:  # every code path (a conv and a pool layer suffice per-layer), tiny sizes
    batches, layer_batches, repeats, voxel_cap, max_layers = [2], [2], 1, 24, 2
    args.check_batch = 2
    uresnet_model = {**bench_uresnet.QUICK_MODEL, **uresnet_model}
    uresnet_sizes, uresnet_batches = [(32, 64)], [1]
    sphere_ls, sphere_ref_ls, sphere_batch = [4], [], 2

  # The PyTorch peer runs first, in a child process, before JAX claims most of the GPU's memory.
  torch_result = None
  total_weight = sum(SECTION_WEIGHTS[s] for s in sections)
  if "uresnet" in sections:
    import importlib.util  # pylint: disable=g-import-not-at-top
    gpu_driver = os.path.exists("/proc/driver/nvidia/version")
    if args.no_torch:
      torch_result = {"skipped": "--no-torch"}
    elif importlib.util.find_spec("torch") is None:
      torch_result = {"skipped": "torch is not installed (the 'peers' extra)"}
    elif gpu_driver or args.cpu_dry_run:
      share = budget.left() * SECTION_WEIGHTS["uresnet"] / total_weight * TORCH_SHARE
      print(f"PyTorch UResNet peer (child process, {share:.0f} s)", flush=True)
      spec = {"model": {k: v for k, v in uresnet_model.items()
                        if k in bench_uresnet.TORCH_PEER_DEFAULTS},
              "runs": uresnet_runs(uresnet_sizes, uresnet_batches), "repeats": repeats,
              "budget_s": max(share - 15, 5), "allow_cpu": args.cpu_dry_run}
      torch_result = run_torch_peer(spec, share)
      print(f"  {torch_result if 'rows' not in torch_result else {**torch_result, 'rows': '...'}}",
            flush=True)

  import jax  # pylint: disable=g-import-not-at-top
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.cpu_dry_run:
    print(f"gpu_sparse_check: no GPU (JAX backend {jax.default_backend()!r}); nothing to measure. "
          "Run it on a GPU machine, or pass --cpu-dry-run for a tiny interpret-mode run that checks "
          "the script.")
    return 0
  interpret = not on_gpu
  dev = jax.devices()[0]
  results = {"device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__,
             "interpret": interpret, "args": vars(args)}
  print(f"device: {results['device']}; interpret={interpret}; budget {args.budget_s:.0f} s; "
        f"sections {', '.join(sections)}", flush=True)

  def save():
    if args.out:
      io.write_text_atomic(args.out, json.dumps(results, indent=1, default=float))

  from recoil_jax.studies.tpc import model as tpc_model
  default_caps = list(tpc_model.TpcDirectionNet.capacity_per_event)
  data = {}
  need = ((batches if "network" in sections else []) + (layer_batches if "layers" in sections else [])
          + ([args.check_batch] if "check" in sections else []))
  for b in sorted(set(need)):
    t0 = time.perf_counter()
    data[b] = make_tracks(b, args.seed + b, 2048, voxel_cap)
    print(f"simulated + preprocessed {b} tracks in {time.perf_counter() - t0:.1f} s "
          f"(max {int(data[b][2].max())} voxels)", flush=True)

  def caps_for(b):
    if not args.cpu_dry_run:
      return default_caps
    return [int(n * 1.25) + 8 for n in measure_capacities(*data[b][:3])]

  remaining = total_weight

  def section_budget(name: str) -> Budget:
    nonlocal remaining
    share = budget.share(SECTION_WEIGHTS[name], remaining)
    remaining -= SECTION_WEIGHTS[name]
    print(f"\n[{name}] {share.left():.0f} s", flush=True)
    return share

  try:
    for name in sections:
      sb = section_budget(name)
      if name == "selfcheck":
        run_selfcheck_section(results)
      elif name == "check":  # always runs in full: correctness is the point
        coords, charges, num, _ = data[args.check_batch]
        caps = caps_for(args.check_batch)
        print(f"correctness checks on {args.check_batch} events, capacities/event {caps}", flush=True)
        rows = check_kernels(coords, charges, num, caps, interpret, max_layers)
        results["checks"] = [dict(zip(("check", "error", "tolerance", "ok"), r)) for r in rows]
        for r in rows:
          print(f"  {'ok ' if r[3] else 'BAD'} {r[0]}: {r[1]:.3g} (tol {r[2]:.3g})", flush=True)
      elif name == "matmul" and sb.left() > 5:
        results["matmul_tflops"] = matmul_rates(repeats, 8192 if on_gpu else 256)
        print(f"  matmul TFLOP/s: {results['matmul_tflops']}", flush=True)
      elif name == "network":
        for b in batches:
          time_network(*data[b], caps_for(b), repeats, interpret, sb, results)
          save()
      elif name == "layers":
        for b in layer_batches:
          time_layers(*data[b][:3], caps_for(b), repeats, interpret, sb, results, max_layers)
          save()
      elif name == "uresnet":
        time_uresnet(uresnet_model, uresnet_runs(uresnet_sizes, uresnet_batches), repeats, sb,
                     torch_result, results)
      elif name == "sphere":
        time_sphere(sphere_ls, sphere_ref_ls, args.sphere_n, sphere_batch, repeats, sb, results,
                    args.sphere_ref_gib, args.sphere_ref_max_s, args.seed)
      save()
  finally:
    save()
    print_report(results)
  failed = [c["check"] for c in results.get("checks", []) if not c["ok"]]
  if "selfcheck" in results and not results["selfcheck"]["ok"]:
    failed.append("Pallas self-check")
  failed += [f"sphere {r['layer']} L={r['L']}" for r in results.get("sphere", []) if r.get("ok") is False]
  if failed:
    print(f"\n{len(failed)} check(s) FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
