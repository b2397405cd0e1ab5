"""Per-layer profile of the paper trunk's XLA sparse path: kernel-map build vs arithmetic.

On a batch of simulated 50 keV tracks (σ = 443 µm, the paper's preprocessing, 120³ grid; the same
batch as ``scripts/bench_sparse_conv.py``) it runs the trunk of the TPC paper (arXiv 2403.15949)
layer by layer with the capacities of ``TpcDirectionNet`` and times, each as its own jitted
function:

  voxels   from_padded_voxels (sort + duplicate merge)
  sites    the output-site work alone (the jitted layer returning only its output coordinates,
           so XLA drops the rulebook entries and the arithmetic)
  arith    the arithmetic alone, given the layer's precomputed kernel map (gathers, matmuls,
           scatters; for a space-to-depth conv also the regrouping of the features)
  fwd      the whole layer (sites + rulebook + arithmetic + bias/ReLU); fwd - arith is the
           kernel-map cost
  fwd+bwd  value and gradient of sum(out * r) in the input features (and the kernel)
  GMAC     the layer's useful multiply-adds: rulebook pairs (output site, active input voxel of the
           fine grid) × C_in × C_out, in 10⁹; "GFLOP/s" is 2 × GMAC / arith, the rate at which
           the arithmetic did useful work (a space-to-depth conv also multiplies the empty voxels
           of its coarse cells, so its rate is low by design)

plus the whole paper network (trunk + homoscedastic head) forward and forward+backward as in the
benchmark. Times are medians of ``--repeats`` calls after one warm-up (compilation excluded);
the machine load is printed with them.

  python scripts/profile_sparse_trunk.py --batch 64 --repeats 5
  python scripts/profile_sparse_trunk.py --batch 64 --energy-kev 40 --sigma-um 200   # smaller events
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHANNELS = {0: 50, 2: 30, 3: 20}


def _median_time(fn, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _arithmetic(kind: str, kernel: int, stride: int, cap: int, st, method: str):
  """(jitted f(st, w, maps), maps): the layer's arithmetic alone, its kernel map built here once.

  Mirrors what `reference.sparse_conv` / `sparse_max_pool` run (space-to-depth when this checkout
  has it, so that older checkouts can be profiled too).
  """
  import jax
  from recoil_jax.ops.sparse import kernel_map as km
  from recoil_jax.ops.sparse import reference

  ks, ss, zero, one = (kernel,) * 3, (stride,) * 3, (0,) * 3, (1,) * 3
  flat = lambda w: w.reshape((-1,) + w.shape[3:])
  if kind == "pool":
    kmap = km.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, zero, one, cap,
                             method=method, build_in_map=False)
    return jax.jit(lambda s, w, m: reference.gather_max(s.features, m.out_map)), kmap
  if hasattr(reference, "can_space_to_depth") and reference.can_space_to_depth(ks, ss, one):
    maps = km.build_space_to_depth_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, zero,
                                       cap, method=method)
    return jax.jit(lambda s, w, m: reference.conv_compute(
        reference._regroup_features(s.features, m[0], ss), m[1],
        flat(reference.space_to_depth_kernel(w, ss)))), maps
  kmap = km.build_conv_map(st.coords, st.spatial_shape, st.batch_size, ks, ss, zero, one, cap,
                           method=method)
  return jax.jit(lambda s, w, m: reference.conv_compute(s.features, m, flat(w))), kmap


def _useful_gmac(kind: str, kernel: int, stride: int, cap: int, st, c_out: int) -> float:
  """Useful multiply-adds of a conv in 10⁹: rulebook pairs on the fine grid × C_in × C_out (pool: 0)."""
  if kind == "pool":
    return 0.0
  from recoil_jax.ops.sparse import kernel_map as km
  kmap = km.build_conv_map(st.coords, st.spatial_shape, st.batch_size, (kernel,) * 3, (stride,) * 3,
                           (0,) * 3, (1,) * 3, cap, build_in_map=False)
  pairs = int(np.sum(np.asarray(kmap.out_map) >= 0))
  return pairs * st.num_channels * c_out / 1e9


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--method", default="auto", help="kernel-map method: auto, sort, grid or bitmap")
  p.add_argument("--skip-model", action="store_true", help="only the per-layer table")
  p.add_argument("--energy-kev", type=float, default=50.0, help="simulated recoil energy")
  p.add_argument("--sigma-um", type=float, default=443.0, help="smearing σ of the preprocessing")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp

  import bench_sparse_conv
  from recoil_jax.studies.tpc import model as tpc_model
  from recoil_jax.ops import sparse
  from recoil_jax.ops.sparse import reference

  coords, charges, nvox, labels, _ = bench_sparse_conv.make_batch(
      args.batch, args.seed, 2048, args.energy_kev, args.sigma_um)
  b = args.batch
  caps = tpc_model.TpcDirectionNet().capacity_per_event
  print(f"batch {b} simulated {args.energy_kev:g} keV tracks (σ {args.sigma_um:g} µm), "
        f"{np.mean(nvox):.0f} active voxels/event; "
        f"capacities/event {tuple(caps)}; load average {os.getloadavg()}")

  vox = jax.jit(lambda c, q, n: sparse.from_padded_voxels(c, q[..., None], n, (120,) * 3))
  args_v = (jnp.asarray(coords), jnp.asarray(charges), jnp.asarray(nvox))
  st = vox(*args_v)
  rows = [("voxels", st.capacity, int(st.num_active), _median_time(lambda: vox(*args_v), args.repeats),
           float("nan"), float("nan"), float("nan"), float("nan"))]
  rng = np.random.default_rng(0)
  total_map = total_arith = total_fwd = total_bwd = 0.0
  for i, (kind, _, kernel, stride) in enumerate(tpc_model.TRUNKS["paper"]):
    cap = caps[i] * b
    if kind == "conv":
      c_out = CHANNELS[i]
      w = jnp.asarray(rng.normal(size=(kernel,) * 3 + (st.num_channels, c_out))
                      * (kernel ** 3 * st.num_channels) ** -0.5, jnp.float32)
      bias = jnp.zeros((c_out,), jnp.float32)

      def layer(s, w, stride=stride, cap=cap, bias=bias):
        out = reference.sparse_conv(s, w, bias, strides=stride, out_capacity=cap, method=args.method)
        return out.replace(features=jax.nn.relu(out.features))
      name = f"conv k{kernel} s{stride} {st.num_channels}->{c_out}"
    else:
      c_out = st.num_channels
      w = jnp.zeros(())

      def layer(s, w, kernel=kernel, stride=stride, cap=cap):
        return reference.sparse_max_pool(s, kernel, strides=stride, out_capacity=cap,
                                         method=args.method)
      name = f"pool k{kernel} s{stride}"
    r = jnp.asarray(rng.normal(size=(cap, c_out)), jnp.float32)
    arith, maps = _arithmetic(kind, kernel, stride, cap, st, args.method)
    t_arith = _median_time(lambda: arith(st, w, maps), args.repeats)
    mapf = jax.jit(lambda s, w, layer=layer: layer(s, w).coords)
    fwd = jax.jit(layer)
    bwd = jax.jit(jax.value_and_grad(
        lambda x, w, s, layer=layer, r=r: jnp.sum(layer(s.replace(features=x), w).features * r),
        argnums=(0, 1)))
    gmac = _useful_gmac(kind, kernel, stride, cap, st, c_out)
    t_map = _median_time(lambda: mapf(st, w), args.repeats)
    t_fwd = _median_time(lambda: fwd(st, w), args.repeats)
    t_bwd = _median_time(lambda: bwd(st.features, w, st), args.repeats)
    dropped = int(st.overflow)
    st = fwd(st, w)
    rows.append((name, cap, int(st.num_active) + int(st.overflow) - dropped, t_map, t_arith, t_fwd,
                 t_bwd, gmac))
    total_map += t_map
    total_arith += t_arith
    total_fwd += t_fwd
    total_bwd += t_bwd
  print(f"{'layer':<28} {'rows':>7} {'sites':>7} {'sites ms':>9} {'arith ms':>9} {'fwd ms':>8} "
        f"{'fwd+bwd ms':>11} {'GMAC':>6} {'GFLOP/s':>8}")
  for name, cap, sites, t_map, t_arith, t_fwd, t_bwd, gmac in rows:
    print(f"{name:<28} {cap:>7} {sites:>7} {t_map * 1e3:>9.1f} {t_arith * 1e3:>9.1f} "
          f"{t_fwd * 1e3:>8.1f} {t_bwd * 1e3:>11.1f} {gmac:>6.2f} {2 * gmac / t_arith:>8.1f}")
  print(f"{'sum of layers':<28} {'':>7} {'':>7} {total_map * 1e3:>9.1f} {total_arith * 1e3:>9.1f} "
        f"{total_fwd * 1e3:>8.1f} {total_bwd * 1e3:>11.1f}")
  if not args.skip_model:
    res = bench_sparse_conv.run_recoil_jax(coords, charges, nvox, labels, args.repeats)
    print(f"paper network (trunk + head): forward {res['forward_s'] * 1e3:.0f} ms, "
          f"forward+backward {res['backward_s'] * 1e3:.0f} ms, overflow {res['capacity_overflow']}; "
          f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
