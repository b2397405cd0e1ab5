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
* e3nn-jax's spherical-harmonics route, if ``e3nn_jax`` is installed (the ``peers``
  extra, ``pip install -e '.[peers]'``; not a core dependency): grid → Y_ℓm coefficients
  (``from_s2grid``) → a per-degree ``e3nn_jax.flax.Linear`` mixing 2 → 8 channels →
  grid (``to_s2grid``), on e3nn's "soft" grid 2L × (2L−1), which has the samples and
  weights of the project's "dh" grid; with e3nn's default transforms and with
  ``use_s2fft=True``. That is an S² → S² map, the N = 1 (zonal-filter) case of the
  S² → SO(3) layer, so it is timed against the project's layer at N = 1 (its peer) as
  well as at N = 3; each L also checks that the project's N = 1 layer with filters
  matched to e3nn's weights gives e3nn's output, and e3nn's route's equivariance.
  e3nn-jax has no SO(3) → SO(3) counterpart (no SO(3) Fourier transform).

Prints markdown tables with the ratios direct / fast. Timings depend on the machine's
load: record ``uptime`` beside them.

Commands (the tables in BENCHMARKS.md, "Spherical CNN layers"):
  nice -n 0 python scripts/bench_spherical.py                 # L = 16, 32, 64; ~40 min
  python scripts/bench_spherical.py --L 8 --L_check 4 --quick # ~8 min (JAX start-up
                                                              # and compilation per case)
  python scripts/bench_spherical.py --only e3nn --L 16 32     # e3nn-jax vs the fast path
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
PARTS = ("fast", "direct", "model", "e3nn")  # --only choices.
E3NN_TOL = 1e-4  # Relative max error of e3nn's checks (float32 transforms).
# e3nn's use_s2fft=True path runs s2fft's transforms in float32, whose error grows with L
# (1e-5 at L = 16, 4e-5 at 32 against e3nn's default): a looser bound for that cross-check.
E3NN_S2FFT_TOL = 1e-3


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _jit_and_time(apply, params, x, mode: str, t0: float):
  """(jitted fn, setup seconds since ``t0`` incl. its first call, warm call times [s]).

  ``mode``: "fwd" times ``apply(params, x)``; otherwise the value and gradient of
  Σ apply(params, x)² with respect to ``params``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if mode == "fwd":
    fn = jax.jit(apply)
  else:
    fn = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.square(apply(p, x)))))
  jax.block_until_ready(fn(params, x))
  setup = time.perf_counter() - t0
  jax.block_until_ready(fn(params, x))  # Warm-up.
  times = _timed(lambda: jax.block_until_ready(fn(params, x)), min_seconds=2.0,
                 min_repeats=5, max_repeats=200)
  return fn, setup, times


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
  rss_imports = _rss_mb()
  L, kind, mode = case["L"], case["kind"], case["mode"]
  N = case.get("N", N_DIR)
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  if kind == "s2so3":
    c_in, c_out = S2_CHANNELS
    x = rng.standard_normal((1,) + grids.s2fft_grid(L, "dh").shape + (c_in,))
    # N = 1 (zonal filters) is the like-for-like peer of e3nn's route, which has no bias.
    module = layers.S2ToSO3Conv(c_out, L_out=L, N=N, use_bias=case.get("bias", True))
  else:
    c_in, c_out = SO3_CHANNELS
    x = rng.standard_normal((1,) + grids.so3_grid(L, N_DIR, "dh").shape + (c_in,))
    module = layers.SO3ToSO3Conv(c_out, L_out=L, N_out=N_DIR)
  x = jnp.asarray(x, jnp.float32)
  params = module.init(jax.random.PRNGKey(0), x)  # Builds the s2fft kernels (cached).
  fn, setup, times = _jit_and_time(module.apply, params, x, mode, t0)
  return {"median_s": statistics.median(times), "repeats": len(times), "setup_s": setup,
          "params": layers.param_count(params["params"]), "flops": _xla_flops(fn, params, x),
          "ideal_direct_flops": _ideal_direct_flops(kind, L, c_in, N),
          "rss_after_case_imports_mb": rss_imports}


def _xla_flops(fn, *args) -> float | None:
  """XLA's cost-analysis flop count of the compiled function (None if unavailable)."""
  try:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
  except Exception:  # pylint: disable=broad-except
    return None


def _ideal_direct_flops(kind: str, L: int, c_in: int, N: int = N_DIR) -> float:
  """Flops of direct quadrature with the filter basis tabulated beforehand (its best case):
  T[q, K, c] = Σ_p B*[q, p, K] w_p x[p, c] costs 4·Q·P·K·C_in real flops (complex basis,
  real input), K = L(2N−1) for S² → SO(3), L(2N−1)² for SO(3) → SO(3); the product with the
  filters after it is negligible. The basis itself (Q·P·K complex numbers: 104 GB for
  S² → SO(3) at L = 32) does not fit in memory beyond L ≈ 16."""
  n = 2 * N - 1
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


# ----------------------------------------------------------------------------- e3nn-jax


def _e3nn_route(L: int, features: int, use_s2fft: bool = False):
  """e3nn-jax's S² → S² spherical convolution at band-limit L: (init, apply, linear, irreps).

  The standard e3nn way: grid → spherical-harmonic coefficients (``from_s2grid``), a
  learnt per-degree linear map mixing channels (``e3nn_jax.flax.Linear`` with
  ``channel_out``: one [C_in, C_out] real matrix per ℓ, identical for every m, which is
  Schur's lemma), coefficients → grid (``to_s2grid``). Degrees ℓ = 0 … L − 1 with e3nn's
  parities of a scalar signal, irreps "0e+1o+2e+3o+…" (``s2_irreps(L − 1)``).

  The grid is e3nn's "soft" quadrature at res_beta = 2L, res_alpha = 2L − 1: rows at
  β_i = π(i + ½)/2L and columns at α_j = 2πj/(2L − 1), with the Kostelec–Rockmore
  weights — the same samples and weights as the project's "dh" grid
  (``grids.s2fft_grid(L, "dh")``, 2L × (2L − 1)), and the grid e3nn's ``use_s2fft=True``
  requires (lmax = L − 1). e3nn places them differently in space (y is its polar axis and
  its rows run from y = −1 up; the map between the two placements is a fixed orthogonal
  one), which leaves a per-degree map on the sample array unchanged: its kernel depends on
  the samples only through their mutual angles. The arrays are therefore passed as they
  are, channels moved from last (the project's layout) to before the grid axes (e3nn's).

  ``use_s2fft=False`` (e3nn's default): an rfft over α and a dense precomputed Legendre
  table over β. ``use_s2fft=True``: e3nn calls s2fft's own "dh" transforms.
  """
  import e3nn_jax as e3nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  irreps = e3nn.s2_irreps(L - 1)  # p_val = 1, p_arg = −1: "0e+1o+2e+…".
  linear = e3nn.flax.Linear(irreps, channel_out=features)

  def coeffs(x):  # [B, 2L, 2L−1, C] → IrrepsArray [B, C, L²]
    sig = e3nn.SphericalSignal(jnp.moveaxis(x, -1, -3), quadrature="soft")
    return e3nn.from_s2grid(sig, irreps, use_s2fft=use_s2fft)

  def apply(params, x):
    c = linear.apply(params, coeffs(x))
    y = e3nn.to_s2grid(c, 2 * L, 2 * L - 1, quadrature="soft", use_s2fft=use_s2fft)
    return jnp.moveaxis(y.grid_values, -3, -1)

  def init(key, x):
    return linear.init(key, coeffs(x))

  return init, apply, linear, irreps


def _e3nn_layer(case: dict[str, Any]) -> dict[str, Any]:
  """Times e3nn's route as ``_fast_layer`` times the project's (same input, same loss)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, layers  # pylint: disable=g-import-not-at-top
  import e3nn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  rss_imports = _rss_mb()  # e3nn-jax's imports (sympy among them) cost memory of their own.
  L, mode = case["L"], case["mode"]
  c_in, c_out = S2_CHANNELS
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  x = jnp.asarray(rng.standard_normal((1,) + grids.s2fft_grid(L, "dh").shape + (c_in,)),
                  jnp.float32)
  init, apply, _, _ = _e3nn_route(L, c_out, use_s2fft=case.get("use_s2fft", False))
  params = jax.jit(init)(jax.random.PRNGKey(0), x)  # Eager e3nn runs op by op: slow.
  fn, setup, times = _jit_and_time(apply, params, x, mode, t0)
  return {"median_s": statistics.median(times), "repeats": len(times), "setup_s": setup,
          "params": layers.param_count(params["params"]), "flops": _xla_flops(fn, params, x),
          "rss_after_case_imports_mb": rss_imports}


def _e3nn_check(case: dict[str, Any]) -> dict[str, Any]:
  """e3nn's route = the project's S²→SO(3) layer at N = 1, and e3nn's own equivariance.

  Agreement: the project's layer with zonal filters (N = 1, only n = 0) computes
  out_d = Σ_{ℓ,c} Re ψ̂_{ℓ0,cd} √(4π/(2ℓ+1)) P_ℓ f_c on its γ = 0 slice (P_ℓ: the projection
  on degree ℓ; the addition theorem applied to the definition in ``layers``), e3nn's route
  out_d = Σ_{ℓ,c} W^ℓ_{cd} P_ℓ f_c. The effective W^ℓ of e3nn's Linear (its path
  normalisation included) is read off by applying it to unit coefficients; the project's
  kernel is set to ψ̂_{ℓ0} = W^ℓ / √(4π/(2ℓ+1)) (real), and both run on the same random,
  not band-limited, sample array. ``use_s2fft=True`` is compared with the default.

  Equivariance, in e3nn's own way: random coefficients c, rotated by random Euler angles
  with ``IrrepsArray.transform_by_angles``; route(grid(rot c)) against
  rot(route(grid(c))) (the output's coefficients rotated the same way).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import e3nn_jax as e3nn  # pylint: disable=g-import-not-at-top
  from recoil_jax.ops.sphere import grids, layers  # pylint: disable=g-import-not-at-top
  L = case["L"]
  c_in, c_out = S2_CHANNELS
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1,) + grids.s2fft_grid(L, "dh").shape + (c_in,)),
                  jnp.float32)
  init, apply, linear, irreps = _e3nn_route(L, c_out)
  # Everything jitted: eager e3nn compiles each of its many small ops separately.
  params = jax.jit(init)(jax.random.PRNGKey(0), x)
  # Rows (ℓ, c): unit coefficient at (channel c, m = 0 of degree ℓ).
  unit = np.zeros((L, c_in, c_in, L * L), np.float32)
  for ell in range(L):
    unit[ell, np.arange(c_in), np.arange(c_in), ell * ell + ell] = 1.0
  probe = jax.jit(lambda p, u: linear.apply(p, e3nn.IrrepsArray(irreps, u)).array)(
      params, jnp.asarray(unit))
  W = np.stack([np.asarray(probe)[ell, :, :, ell * ell + ell] for ell in range(L)])
  kappa = np.sqrt(4 * np.pi / (2 * np.arange(L) + 1))
  kernel = (W / kappa[:, None, None])[:, None].astype(np.complex64)  # [L, 1, C_in, C_out]
  project = layers.S2ToSO3Conv(c_out, L_out=L, N=1, use_bias=False)
  y_proj = jax.jit(project.apply)({"params": {"kernel": jnp.asarray(kernel)}}, x)[:, 0]
  # e3nn's default transforms are dense tables that XLA embeds as constants (266 MB each
  # at L = 64; one jit of the whole check peaked at 7.3 GB): one small jitted stage at a
  # time, caches freed between them at large L (at small L the freeing costs more
  # recompilation, of e3nn's Legendre tables among others, than it saves).
  free = jax.clear_caches if L >= 48 else (lambda: None)
  free()
  route = jax.jit(apply)
  y_e3nn = route(params, x)
  _, apply_s2fft, _, _ = _e3nn_route(L, c_out, use_s2fft=True)
  y_s2fft = jax.jit(apply_s2fft)(params, x)
  free()
  scale = float(jnp.max(jnp.abs(y_proj)))

  # Equivariance (band-limited input, as exact equivariance needs).
  @jax.jit
  def grid(c):  # coefficients [B, C, L²] → project layout [B, 2L, 2L−1, C]
    y = e3nn.to_s2grid(e3nn.IrrepsArray(irreps, c), 2 * L, 2 * L - 1, quadrature="soft")
    return jnp.moveaxis(y.grid_values, -3, -1)

  @jax.jit
  def coeffs(y):  # the inverse
    sig = e3nn.SphericalSignal(jnp.moveaxis(y, -1, -3), quadrature="soft")
    return e3nn.from_s2grid(sig, irreps).array

  @jax.jit
  def rotate(c, angles):
    return e3nn.IrrepsArray(irreps, c).transform_by_angles(*angles).array

  c = e3nn.normal(irreps, jax.random.PRNGKey(1), (1, c_in)).array
  angles = jnp.asarray(rng.uniform(0, 1, 3) * np.array([2 * np.pi, np.pi, 2 * np.pi]),
                       jnp.float32)
  # One batch of two through each stage: the input and its rotation, then the output
  # (rotated afterwards) and the output of the rotated input.
  y, rot_then_y = route(params, grid(jnp.concatenate([c, rotate(c, tuple(angles))])))
  y, rot_then_y = y[None], rot_then_y[None]
  free()
  y_then_rot = grid(rotate(coeffs(y), tuple(angles)))
  eq_scale = float(jnp.max(jnp.abs(y_then_rot)))
  res = {
      "L": L, "grid": f"e3nn 'soft' {2 * L}x{2 * L - 1} = project 'dh' (lmax {L - 1})",
      "agree_rel": float(jnp.max(jnp.abs(y_e3nn - y_proj))) / scale,
      "s2fft_vs_default_rel": float(jnp.max(jnp.abs(y_s2fft - y_e3nn))) / scale,
      "equivariance_rel": float(jnp.max(jnp.abs(rot_then_y - y_then_rot))) / eq_scale,
      # Control: the unrotated output, to show the check would see a wrong rotation.
      "equivariance_control_rel": float(jnp.max(jnp.abs(y - y_then_rot))) / eq_scale,
  }
  res["passed"] = bool(max(res["agree_rel"], res["equivariance_rel"]) < E3NN_TOL
                       and res["s2fft_vs_default_rel"] < E3NN_S2FFT_TOL
                       and res["equivariance_control_rel"] > 0.1)
  return res


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
        ("direct", "check"): _direct_check, ("e3nn", "layer"): _e3nn_layer,
        ("e3nn", "check"): _e3nn_check}[(case["impl"], case["what"])]
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
  parser.add_argument("--only", default="",
                      help="comma-separated parts to run, of " + ",".join(PARTS)
                      + " (default: all; --no_direct, --no_model, --quick still apply)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(json.loads(args.child))), flush=True)
    return 0
  parts = set(args.only.split(",")) if args.only else set(PARTS)
  if parts - set(PARTS):
    parser.error(f"--only: unknown parts {sorted(parts - set(PARTS))}; choose from {PARTS}")
  if args.no_direct:
    parts.discard("direct")
  if args.no_model or args.quick:
    parts.discard("model")
  results: dict[str, Any] = {"L": args.L, "L_check": args.L_check, "layers": [], "model": [],
                             "check": None, "e3nn": [], "parts": sorted(parts)}
  print(f"# bench_spherical: L = {args.L}, N = {N_DIR}, batch 1 (layers), float32 jitted "
        f"fast path vs float64 numpy direct quadrature; {os.cpu_count()} CPU cores; "
        f"load before: {os.getloadavg()}", flush=True)
  try:
    import e3nn_jax  # pylint: disable=g-import-not-at-top
    e3nn = f"e3nn-jax {e3nn_jax.__version__}"
  except ImportError:
    e3nn = "e3nn-jax not installed (pip install -e '.[peers]'): its rows skipped"
    parts.discard("e3nn")
  print(e3nn, flush=True)
  results["e3nn_jax"] = e3nn

  if args.L_check and "direct" in parts:
    print(f"checking the blocked quadrature against reference.py at L = {args.L_check} ...",
          flush=True)
    results["check"] = run_case({"impl": "direct", "what": "check", "L": args.L_check},
                                args.timeout)
    print(json.dumps(results["check"]), flush=True)

  for L in args.L:
    for kind in ("s2so3", "so3so3"):
      if not parts & {"fast", "direct"}:
        break
      row = {"kind": kind, "L": L}
      for mode in ("fwd", "fwdbwd"):
        if "fast" not in parts:
          break
        row[f"fast_{mode}"] = run_case({"impl": "fast", "what": "layer", "kind": kind, "L": L,
                                        "mode": mode}, args.timeout)
        print(f"fast {kind} L={L} {mode}: {json.dumps(row[f'fast_{mode}'])}", flush=True)
      if "direct" in parts:
        row["direct_fwd"] = run_case({"impl": "direct", "what": "layer", "kind": kind, "L": L},
                                     args.timeout)
        print(f"direct {kind} L={L}: {json.dumps(row['direct_fwd'])}", flush=True)
      results["layers"].append(row)
    if "e3nn" in parts:
      results["e3nn"].append(_run_e3nn(L, args.timeout, with_n3="fast" not in parts))
  if "model" in parts:
    for mode in ("fwd", "fwdbwd"):
      results["model"].append({"impl": "fast", "mode": mode, **run_case(
          {"impl": "fast", "what": "model", "mode": mode}, args.timeout)})
      print(json.dumps(results["model"][-1]), flush=True)
    if "direct" in parts:
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


def _run_e3nn(L: int, timeout: float, with_n3: bool) -> dict[str, Any]:
  """e3nn's route (both transforms), the project's N = 1 layer (and N = 3 if ``with_n3``)
  at L, and e3nn's check."""
  row: dict[str, Any] = {"L": L}
  cases = {"e3nn": {"impl": "e3nn", "use_s2fft": False},
           "e3nn_s2fft": {"impl": "e3nn", "use_s2fft": True},
           "fast_n1": {"impl": "fast", "kind": "s2so3", "N": 1, "bias": False}}
  if with_n3:
    cases["fast_n3"] = {"impl": "fast", "kind": "s2so3"}
  for name, case in cases.items():
    for mode in ("fwd", "fwdbwd"):
      row[f"{name}_{mode}"] = run_case({"what": "layer", "L": L, "mode": mode, **case}, timeout)
      print(f"{name} L={L} {mode}: {json.dumps(row[f'{name}_{mode}'])}", flush=True)
  row["check"] = run_case({"impl": "e3nn", "what": "check", "L": L}, timeout)
  print(f"e3nn check L={L}: {json.dumps(row['check'])}", flush=True)
  return row


def _e3nn_table(results: dict[str, Any]) -> list[str]:
  """The e3nn-jax rows: e3nn's S² → S² route against the project's S² → SO(3) layer."""
  c_in, c_out = S2_CHANNELS
  out = ["", f"e3nn-jax ({results['e3nn_jax']}) vs the project's fast path, {c_in} → {c_out} "
         "channels, batch 1, float32 jitted. e3nn's route is an S² → S² map with one "
         "[C_in, C_out] matrix per degree ℓ (grid → Y_ℓm coefficients → e3nn Linear → grid, on "
         "e3nn's 'soft' grid 2L × (2L−1), ℓ < L: the samples and weights of the project's "
         "'dh' grid); it is the N = 1 (zonal filter) case of the project's S² → SO(3) layer, "
         "which is the like-for-like row (N = 1, no bias; its complex kernel has 2× the "
         "real parameters, the imaginary parts of the n = 0 entries do nothing). The N = 3 "
         "row (the KamLAND default, 5 γ slices of output) is for scale, not a peer. "
         "RSS after imports: jax and the case's modules (e3nn-jax brings sympy), before any "
         "computation.", "",
         "| L | route | fwd | fwd+bwd | peak RSS (fwd / fwd+bwd) | RSS after imports | "
         "setup (fwd) | params | / project N = 1 (fwd; fwd+bwd) |",
         "|---|---|---|---|---|---|---|---|---|"]
  names = {"fast_n1": "project S2ToSO3Conv, N = 1 (like-for-like)",
           "e3nn": "e3nn-jax from_s2grid → Linear → to_s2grid (default: rfft + Legendre table)",
           "e3nn_s2fft": "e3nn-jax, the same with use_s2fft=True",
           "fast_n3": f"project S2ToSO3Conv, N = {N_DIR} (not like-for-like)"}
  checks = []
  for row in results["e3nn"]:
    L = row["L"]
    n3 = next((r for r in results["layers"] if r["kind"] == "s2so3" and r["L"] == L), {})
    if "fast_fwd" in n3:  # The main table's row, when it ran.
      row = {**row, "fast_n3_fwd": n3["fast_fwd"], "fast_n3_fwdbwd": n3.get("fast_fwdbwd")}
    base = [row.get("fast_n1_fwd") or {}, row.get("fast_n1_fwdbwd") or {}]
    for name in ("fast_n1", "e3nn", "e3nn_s2fft", "fast_n3"):
      f, b = row.get(f"{name}_fwd"), row.get(f"{name}_fwdbwd")
      if f is None:
        continue
      err = [r["error"] for r in (f, b or {}) if "error" in r]
      ratio = "; ".join(
          f"{r['median_s'] / r0['median_s']:.2f}×" if "median_s" in r and "median_s" in r0
          else "–" for r, r0 in zip((f, b or {}), base))
      out.append(f"| {L} | {names[name]} | {_fmt_t(f.get('median_s'))} | "
                 f"{_fmt_t((b or {}).get('median_s'))} | {f.get('peak_rss_mb', 0):.0f} / "
                 f"{(b or {}).get('peak_rss_mb', 0):.0f} MB | "
                 f"{f.get('rss_after_case_imports_mb', 0):.0f} MB | {_fmt_t(f.get('setup_s'))} | "
                 f"{f.get('params', '–')} | {ratio} |" + (f" errors: {err}" if err else ""))
    c = row.get("check") or {}
    checks.append(f"L = {L}: " + (f"error: {c['error']}" if "error" in c else (
        f"{'passed' if c['passed'] else 'FAILED'}: e3nn vs project N = 1 with matched "
        f"filters {c['agree_rel']:.1e}, e3nn equivariance {c['equivariance_rel']:.1e} (both "
        f"< {E3NN_TOL:g}), use_s2fft vs default {c['s2fft_vs_default_rel']:.1e} "
        f"(< {E3NN_S2FFT_TOL:g}), control: the unrotated output is off by "
        f"{c['equivariance_control_rel']:.2f}")))
  out += ["", "Checks (max |Δ| / max |out|): " + "; ".join(checks) + ". The project's layer "
          "with ψ̂_ℓ0 = W^ℓ / √(4π/(2ℓ+1)) (W^ℓ: e3nn's Linear, read off with unit "
          "inputs) gives e3nn's output on the same random sample array; e3nn's "
          "equivariance is tested by rotating its coefficients (transform_by_angles). "
          "e3nn-jax has no SO(3) → SO(3) peer: its SO3Signal is a stack of S² grids over "
          "the axis-angle angle with no Wigner (SO(3) Fourier) transform, so its route would "
          "be the project's s2fft transforms with an e3nn Linear in between."]
  return out


def tables(results: dict[str, Any]) -> str:
  names = {"s2so3": f"S²→SO(3) {S2_CHANNELS[0]}→{S2_CHANNELS[1]} ch",
           "so3so3": f"SO(3)→SO(3) {SO3_CHANNELS[0]}→{SO3_CHANNELS[1]} ch"}
  out = ["| layer (N = 3, batch 1) | L | fast fwd | fast fwd+bwd | fast peak RSS (fwd / "
         "fwd+bwd) | fast setup (kernels + compile) | direct fwd | direct peak RSS | "
         "direct / fast (fwd) | flops: ideal tabulated direct / fast (XLA) |",
         "|---|---|---|---|---|---|---|---|---|---|"] if results["layers"] else []
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
  if results.get("e3nn"):
    out += _e3nn_table(results)
  else:
    out.append(f"\n{results['e3nn_jax']}; e3nn rows not run")
  return "\n".join(out)


if __name__ == "__main__":
  sys.exit(main())
