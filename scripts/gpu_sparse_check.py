"""GPU check of the Pallas sparse kernels: correctness vs the XLA reference, then timings.

One prepared run for a lent GPU (written for an H200). On simulated 50 keV electron recoils
(σ = 443 µm, the preprocessing of arXiv 2403.15949, 120³ voxels of 500 µm) it

1. checks every kernel on the GPU against the XLA reference (float32 products at HIGHEST precision):
   hash-table history independence under concurrent inserts, each paper-trunk rulebook entry for
   entry, conv forward / dX / dW, max-pool forward / backward, bf16 forward, and the whole trunk's
   parameter gradients;
2. measures the fp32 (HIGHEST) and bf16 matmul rates of the card;
3. times the paper's network (trunk + homoscedastic head, recoil_jax/studies/tpc/model.py)
   forward and forward+backward at batch 64 and 256: Pallas vs the XLA path vs the same layers
   as dense 3D convolutions (cuDNN through XLA);
4. times each trunk layer the same three ways, and the rulebook alone, with the FLOPs at active
   sites (2 * pairs * C_in * C_out) against the measured fp32 rate and ~790 TFLOP/s bf16;

and prints markdown tables (results are simulated tracks). Work stops at ``--budget-s`` and what is
done is printed; results also go to ``--out`` (JSON) when given.

  python scripts/gpu_sparse_check.py --out gpu_sparse_check.json     # on a GPU
  python scripts/gpu_sparse_check.py --cpu-dry-run                    # CPU, Pallas interpreter, tiny

On a machine without a GPU (and without --cpu-dry-run) it prints a message and exits with status 0.
The dry run uses two tracks cut to 24 voxels, capacities measured on them, one repeat, per-layer
work on the first two layers (a conv and a pool) and the Pallas interpreter: it checks that every
code path runs (~10 minutes on a busy 2-core CPU); its timings mean nothing.
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


class Budget:
  """Wall-clock budget: `left()` seconds remain; sections check it before starting work."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()


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
  from recoil_jax.studies.tpc import sim as electron_recoil
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
    return tpc_model.DirectionHead().apply({"params": p["direction"]}, h)

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
# Report.

def print_report(results: dict) -> None:
  print()
  print(f"## Sparse conv check — {results['device']} (jax {results['jax']}), simulated 50 keV tracks")
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
  print("\nSparse rows include the rulebook; Pallas float32 products are IEEE fp32 (HIGHEST), the XLA "
        "and dense rows use JAX's default matmul precision. Dense FLOPs (in parentheses) are for the "
        "full grid, and the dense rows' TFLOP/s use them. Simulated tracks.")


# ---------------------------------------------------------------------------------------------------

def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cpu-dry-run", action="store_true",
                 help="tiny run on CPU with the Pallas interpreter (checks the script, times nothing)")
  p.add_argument("--batches", default="64,256", help="comma-separated batch sizes for the timings")
  p.add_argument("--check-batch", type=int, default=8, help="events in the correctness checks")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--sections", default="check,matmul,network,layers",
                 help="any of check, matmul, network, layers (comma-separated)")
  p.add_argument("--layer-batches", default="256,64", help="batch sizes of the per-layer timings")
  p.add_argument("--budget-s", type=float, default=None,
                 help="stop starting new work after this many seconds (default 420; 3600 dry run)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="JSON results file (written atomically)")
  args = p.parse_args()

  import jax
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.cpu_dry_run:
    print(f"gpu_sparse_check: no GPU (JAX backend {jax.default_backend()!r}); nothing to measure. "
          "Run it on a GPU machine, or pass --cpu-dry-run for a tiny interpret-mode run that checks "
          "the script.")
    return 0
  interpret = not on_gpu
  if args.budget_s is None:
    args.budget_s = 3600.0 if args.cpu_dry_run else 420.0
  budget = Budget(args.budget_s)
  sections = set(args.sections.split(","))
  unknown = sections - {"check", "matmul", "network", "layers"}
  if unknown:
    raise SystemExit(f"--sections: unknown section(s) {sorted(unknown)}")
  batches = [int(b) for b in args.batches.split(",") if b]
  layer_batches = [int(b) for b in args.layer_batches.split(",") if b]
  repeats = args.repeats
  voxel_cap, max_layers = None, 5
  if args.cpu_dry_run:  # every code path (a conv and a pool layer suffice per-layer), tiny sizes
    batches, layer_batches, repeats, voxel_cap, max_layers = [2], [2], 1, 24, 2
    args.check_batch = 2
  dev = jax.devices()[0]
  results = {"device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__,
             "interpret": interpret, "args": vars(args)}
  print(f"device: {results['device']}; interpret={interpret}; budget {args.budget_s:.0f} s", flush=True)

  def save():
    if args.out:
      io.write_text_atomic(args.out, json.dumps(results, indent=1, default=float))

  from recoil_jax.studies.tpc import model as tpc_model
  default_caps = list(tpc_model.TpcDirectionNet.capacity_per_event)
  data = {}
  for b in sorted(set(batches + layer_batches + ([args.check_batch] if "check" in sections else []))):
    t0 = time.perf_counter()
    data[b] = make_tracks(b, args.seed + b, 2048, voxel_cap)
    print(f"simulated + preprocessed {b} tracks in {time.perf_counter() - t0:.1f} s "
          f"(max {int(data[b][2].max())} voxels)", flush=True)

  def caps_for(b):
    if not args.cpu_dry_run:
      return default_caps
    return [int(n * 1.25) + 8 for n in measure_capacities(*data[b][:3])]

  try:
    if "check" in sections:
      coords, charges, num, _ = data[args.check_batch]
      caps = caps_for(args.check_batch)
      print(f"correctness checks on {args.check_batch} events, capacities/event {caps}", flush=True)
      rows = check_kernels(coords, charges, num, caps, interpret, max_layers)
      results["checks"] = [dict(zip(("check", "error", "tolerance", "ok"), r)) for r in rows]
      for r in rows:
        print(f"  {'ok ' if r[3] else 'BAD'} {r[0]}: {r[1]:.3g} (tol {r[2]:.3g})", flush=True)
      save()
    if "matmul" in sections and budget.left() > 30:
      results["matmul_tflops"] = matmul_rates(repeats, 8192 if on_gpu else 256)
      print(f"  matmul TFLOP/s: {results['matmul_tflops']}", flush=True)
      save()
    if "network" in sections:
      for b in batches:
        time_network(*data[b], caps_for(b), repeats, interpret, budget, results)
        save()
    if "layers" in sections:
      for b in layer_batches:
        time_layers(*data[b][:3], caps_for(b), repeats, interpret, budget, results, max_layers)
        save()
  finally:
    save()
    print_report(results)
  failed = [c for c in results.get("checks", []) if not c["ok"]]
  if failed:
    print(f"\n{len(failed)} check(s) FAILED", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
