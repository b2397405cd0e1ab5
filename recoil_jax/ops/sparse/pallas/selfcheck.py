"""Self-check of the Pallas sparse kernels before ``backend="auto"`` picks them on a GPU.

The kernels are tested in the Pallas interpreter on CPU, but Triton compilation, concurrent atomics
and the GPU's arithmetic only meet on a GPU. So the first time ``"auto"`` would resolve to
``"pallas"`` on a GPU (`dispatch.resolve_backend`), this module runs a small random case through the
Pallas path and the XLA path and compares them; if anything disagrees or raises, it logs one warning
saying what failed and ``"auto"`` resolves to ``"xla"`` from then on. A user's first GPU run therefore
cannot silently train on wrong kernels.

The case (`run_selfcheck`): 2 events on a 12³ grid, 300 active voxels (and garbage in the 84
inactive rows, which both paths must ignore), through

* a submanifold conv k3, 4 → 16 channels (stride 1; the rank-1 update path for small C_in),
* a regular conv k3 / stride 2 / padding 1, 16 → 24 channels (the hash-table rulebook, the tl.dot path),
* a max pool k2 / stride 2,

each compared on output sites (exactly), forward features, dX and (convs) dW of
``sum(out * g)`` for a random ``g``. The XLA path runs with ``jax.default_matmul_precision("highest")``
(the Pallas kernels always use IEEE float32 products), so the only legitimate difference is the order
of the float32 sums.

Tolerances. Every compared number is a sum of n products (n = K·C_in + 1 with the bias for the
forward pass, K·C_out for dX, the N_out output rows for dW, K for the max-pool dX). Any summation
order of n float32 terms is within γ_n · Σ|terms| of the exact sum, γ_n = n·u / (1 − n·u), u = 2⁻²⁴
(one more rounding for each product), so two correct implementations differ by at most
``2 · γ_{n+1} · Σ|terms|`` per element, where Σ|terms| is computed by the XLA path on |x|, |w|, |b|,
|g|. The check reports error / bound and fails above 1. This is the worst case: correct kernels
measure ~1e-2 of it in the interpreter (round-off grows like √n, not n), while a wrong sum (a missed
or doubled pair, a race) or TF32 products (u = 2⁻¹¹) exceed it by one to several orders of
magnitude. Max pooling forward and the output sites must agree exactly.

When it runs: at trace time (dispatch happens when a function is traced), once per device kind
(``platform:device_kind`` of ``jax.devices()[0]``) per process, under a lock (concurrent first
resolutions wait for one check). It runs in a fresh thread, because JAX's trace state is
thread-local: there it computes eagerly on concrete arrays whatever trace (``jit``, ``grad``,
``vmap``, ``shard_map``, Flax transforms) the resolving call is inside. It costs the compilation of
the kernels for the case's shapes (~13 CPU-seconds in the interpreter; scripts/gpu_sparse_check.py
reports the time on a GPU). A check that has not finished after `TIMEOUT_S` (a kernel that never
returns) counts as failed; its thread is left behind.

What it does not change: an explicit ``backend="pallas"`` (or a ``use_backend("pallas")`` block) is
obeyed even after a failed check (one warning says so); on CPU ``"auto"`` is ``"xla"`` without a check.
`pallas_status` returns the result; ``RECOIL_JAX_PALLAS_SELFCHECK=0`` (or false / no / off) skips the
check and trusts the kernels, as before the check existed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
from typing import Callable

import jax
import numpy as np

ENV_VAR = "RECOIL_JAX_PALLAS_SELFCHECK"
TIMEOUT_S = 600.0  # a check still running after this counts as failed
UNIT_ROUNDOFF = 2.0 ** -24  # float32
_TINY = 1e-30

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckRow:
  """One comparison: ``max_abs`` |pallas − xla|, ``max_rel`` relative to max |xla|, ``ratio`` the
  worst error / bound over elements (the check passes at ratio <= 1)."""
  name: str
  max_abs: float
  max_rel: float
  ratio: float
  ok: bool

  def describe(self) -> str:
    return (f"{self.name}: max |pallas - xla| {self.max_abs:.3g} (rel. to max {self.max_rel:.3g}), "
            f"{self.ratio:.3g}x the float32 bound")


@dataclasses.dataclass(frozen=True)
class SelfCheckResult:
  """Outcome of a self-check on one device kind.

  Attributes:
    ok: ``"auto"`` may use Pallas (the comparison passed, or the check was skipped).
    device: ``platform:device_kind`` the check ran on.
    interpret: the Pallas interpreter was used (only when the real backend is not a GPU: tests).
    seconds: wall time of the check (compilation included).
    rows: the comparisons (empty when skipped or when the check raised before any).
    error: the exception (type and message) if the check raised.
    traceback: its formatted traceback.
    skipped: the check was disabled by ``RECOIL_JAX_PALLAS_SELFCHECK``.
  """
  ok: bool
  device: str
  interpret: bool = False
  seconds: float = 0.0
  rows: tuple[CheckRow, ...] = ()
  error: str | None = None
  traceback: str | None = None
  skipped: bool = False

  @property
  def max_ratio(self) -> float:
    return max((r.ratio for r in self.rows), default=0.0)

  def failures(self) -> list[str]:
    """What failed, one line per failed comparison or the exception."""
    out = [r.describe() for r in self.rows if not r.ok]
    if self.error:
      out.append(f"raised {self.error}")
    return out

  def summary(self) -> str:
    if self.skipped:
      return f"Pallas sparse self-check skipped on {self.device} ({ENV_VAR}=0)"
    if self.ok:
      return (f"Pallas sparse self-check passed on {self.device} in {self.seconds:.1f} s "
              f"({len(self.rows)} comparisons, worst error {self.max_ratio:.2g}x the float32 bound)")
    return (f"Pallas sparse self-check FAILED on {self.device}: " + "; ".join(self.failures()))


# ---------------------------------------------------------------------------------------------------
# State: one result per device kind, computed once under a lock.

_LOCK = threading.Lock()
_RESULTS: dict[str, SelfCheckResult] = {}
_WARNED_EXPLICIT: set[str] = set()


def enabled() -> bool:
  """False when ``RECOIL_JAX_PALLAS_SELFCHECK`` is 0 / false / no / off (read at each first check)."""
  return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def device_key() -> str:
  """``platform:device_kind`` of the default device (the one the check runs on)."""
  dev = jax.devices()[0]
  return f"{dev.platform}:{getattr(dev, 'device_kind', str(dev))}"


def auto_may_use_pallas() -> bool:
  """True when ``backend="auto"`` may resolve to Pallas on this (GPU) device kind.

  Runs the self-check the first time it is asked for a device kind (see the module docstring) and
  returns the cached verdict afterwards; never raises. Called by `dispatch.resolve_backend` only when
  JAX's backend is a GPU.
  """
  key = device_key()
  result = _RESULTS.get(key)
  if result is None:
    with _LOCK:
      result = _RESULTS.get(key)
      if result is None:
        result = _first_check(key)
        _RESULTS[key] = result
  return result.ok


def _first_check(key: str) -> SelfCheckResult:
  if not enabled():
    result = SelfCheckResult(ok=True, device=key, skipped=True)
    logger.info("%s: backend='auto' uses the Pallas kernels unchecked", result.summary())
    return result
  result = run_selfcheck()
  if result.ok:
    logger.info("%s; backend='auto' uses the Pallas kernels", result.summary())
  else:
    logger.warning(
        "%s. backend='auto' falls back to the XLA path (correct, slower) for the rest of this "
        "process; explicit backend='pallas' is still obeyed. Details: "
        "recoil_jax.ops.sparse.pallas_status(); please report it. Set %s=0 to skip the check.",
        result.summary(), ENV_VAR)
  return result


def note_explicit_pallas(where: str) -> None:
  """Warns once per device kind when Pallas is requested explicitly after a failed self-check."""
  failed = [k for k, r in tuple(_RESULTS.items()) if not r.ok and k not in _WARNED_EXPLICIT]
  if not failed:
    return
  key = device_key()
  if key in failed:
    with _LOCK:
      if key in _WARNED_EXPLICIT:
        return
      _WARNED_EXPLICIT.add(key)
    logger.warning("%s: backend='pallas' was requested explicitly and is used, although the Pallas "
                   "self-check failed on %s (%s)", where, key, "; ".join(_RESULTS[key].failures()))


def pallas_status(run: bool = False) -> SelfCheckResult | None:
  """The self-check result for the default device's kind.

  Args:
    run: run the check now if it has not run yet (on any backend: off a GPU it uses the Pallas
      interpreter, slowly) and cache it as the first ``"auto"`` resolution would.

  Returns:
    The `SelfCheckResult`, or None when the check has not run (no ``"auto"`` resolution on a GPU yet,
    and ``run`` is False).
  """
  key = device_key()
  if run and key not in _RESULTS:
    with _LOCK:
      if key not in _RESULTS:
        _RESULTS[key] = _first_check(key)
  return _RESULTS.get(key)


def reset() -> None:
  """Forgets every result (tests; a later ``"auto"`` resolution on a GPU checks again)."""
  with _LOCK:
    _RESULTS.clear()
    _WARNED_EXPLICIT.clear()


# ---------------------------------------------------------------------------------------------------
# The check.

def run_selfcheck(interpret: bool | None = None, seed: int = 0) -> SelfCheckResult:
  """Runs the Pallas-vs-XLA comparison now and returns its result (not cached; never raises).

  Args:
    interpret: use the Pallas interpreter; default: when JAX's backend is not a GPU.
    seed: of the random case.
  """
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  key = device_key()
  t0 = time.perf_counter()
  try:
    rows = _in_fresh_thread(lambda: _compare(bool(interpret), seed))
  except Exception as e:  # noqa: BLE001 -- any failure of the Pallas path means "do not use it"
    text = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:300]
    return SelfCheckResult(ok=False, device=key, interpret=bool(interpret),
                           seconds=time.perf_counter() - t0, error=text,
                           traceback="".join(traceback.format_exception(e)))
  return SelfCheckResult(ok=all(r.ok for r in rows), device=key, interpret=bool(interpret),
                         seconds=time.perf_counter() - t0, rows=tuple(rows))


def _in_fresh_thread(fn: Callable[[], list[CheckRow]]) -> list[CheckRow]:
  """``fn()`` in a new thread and its result (or its exception, re-raised here).

  JAX's trace state (the current trace, the axis environment of vmap / shard_map, the abstract mesh)
  and its context-manager settings are thread-local: a fresh thread starts at the top level, so
  ``fn`` computes eagerly even when the caller is being traced by ``jit`` / ``grad`` / ``shard_map``.
  """
  box: dict = {}

  def target():
    try:
      box["value"] = fn()
    except BaseException as e:  # noqa: BLE001 -- handed to the caller
      box["error"] = e

  thread = threading.Thread(target=target, name="recoil_jax-pallas-selfcheck", daemon=True)
  thread.start()
  thread.join(TIMEOUT_S)
  if thread.is_alive():
    raise TimeoutError(f"the self-check did not finish in {TIMEOUT_S:.3g} s (a kernel may hang)")
  if "error" in box:
    raise box["error"]
  return box["value"]


def _case(seed: int):
  """Random sparse tensors with 4 and 16 channels on the same 300 sites, garbage in inactive rows."""
  import jax.numpy as jnp
  from recoil_jax.ops.sparse import tensor
  rng = np.random.default_rng(seed)
  batch, grid, active, capacity = 2, (12, 12, 12), 300, 384
  keys = np.sort(rng.choice(batch * int(np.prod(grid)), size=active, replace=False))
  coords = np.zeros((capacity, 4), np.int32)
  coords[:, 0] = -1
  coords[:active, 0] = keys // int(np.prod(grid))
  coords[:active, 1:] = np.stack(np.unravel_index(keys % int(np.prod(grid)), grid), -1)
  out = []
  for channels in (4, 16):
    feats = rng.normal(size=(capacity, channels)).astype(np.float32)  # garbage rows included
    out.append(tensor.SparseTensor(coords=jnp.asarray(coords), features=jnp.asarray(feats),
                                   spatial_shape=grid, batch_size=batch,
                                   overflow=jnp.zeros((), jnp.int32)))
  return rng, out[0], out[1]


def _compare(interpret: bool, seed: int) -> list[CheckRow]:
  """The comparisons (runs eagerly; see the module docstring)."""
  import jax.numpy as jnp
  from recoil_jax.ops.sparse.pallas import dispatch

  rng, st4, st16 = _case(seed)
  u = UNIT_ROUNDOFF

  def factor(n: int) -> float:  # 2 γ_{n+1}: two summation orders of n products
    return 2.0 * (n + 1) * u / (1.0 - (n + 1) * u)

  def rows_for(name, op, st, params, terms):
    """Sites, forward and gradients of ``op(st, *params, backend)`` with each backend (eager: the
    kernels' own jit caches make a repeated check cheap, and monkeypatched kernels are seen)."""
    g_shape = jax.eval_shape(lambda: op(st, *params, "xla").features).shape
    g = jnp.asarray(rng.normal(size=g_shape), jnp.float32)

    def evaluate(backend, x, params, gg):
      """(output, dX, dparams) of ``sum(out.features * gg)``, one linearisation."""
      def f(x, params):
        out = op(st.replace(features=x), *params, backend)
        return out.features, out
      _, vjp, out = jax.vjp(f, x, params, has_aux=True)
      return (out, *vjp(gg))

    x = st.features
    (out_p, dx_p, dp_p), (out_x, dx_x, dp_x) = (evaluate(b, x, params, g) for b in ("pallas", "xla"))
    # Σ|terms| of every compared number: the XLA path on absolute values (the same calls as above,
    # so no new compilation): forward Σ|x||w| + |b|, dX Σ|g||w|, dW Σ|x||g|. Max pooling keeps x
    # (its forward must match exactly; |x| would route dX differently).
    x_s = jnp.abs(x) if params else x
    s_out, s_dx, s_dp = evaluate("xla", x_s, tuple(jnp.abs(p) for p in params), jnp.abs(g))
    s_y = s_out.features
    same_sites = (np.array_equal(np.asarray(out_p.coords), np.asarray(out_x.coords))
                  and int(out_p.overflow) == int(out_x.overflow) == 0)
    rows = [CheckRow(f"{name} output sites", float(not same_sites), float(not same_sites),
                     0.0 if same_sites else float("inf"), same_sites)]
    checks = [("forward", out_p.features, out_x.features, s_y, terms["forward"]),
              ("dX", dx_p, dx_x, s_dx, terms["dX"])]
    if params:
      checks.append(("dW", dp_p[0], dp_x[0], s_dp[0], terms["dW"]))
    for what, a, b, scale, n in checks:
      a, b, scale = (np.asarray(v, np.float64) for v in (a, b, scale))
      err = np.abs(a - b)
      bound = factor(n) * scale if n else np.zeros_like(scale)
      ratio = float(np.max(err / np.maximum(bound, _TINY), initial=0.0))
      if not np.all(np.isfinite(a)):
        ratio = float("inf")
      max_err = float(err.max(initial=0.0))
      rows.append(CheckRow(f"{name} {what}", max_err,
                           max_err / (float(np.abs(b).max(initial=0.0)) + _TINY), ratio, ratio <= 1.0))
    return rows

  def subm(st, w, b, backend):
    return dispatch.subm_conv(st, w, b, backend=backend, interpret=interpret and backend == "pallas",
                              where="selfcheck subm conv")

  def strided(st, w, b, backend):
    return dispatch.sparse_conv(st, w, b, strides=2, padding=1, backend=backend,
                                interpret=interpret and backend == "pallas",
                                where="selfcheck strided conv")

  def pool(st, backend):
    return dispatch.sparse_max_pool(st, 2, strides=2, backend=backend,
                                    interpret=interpret and backend == "pallas",
                                    where="selfcheck max pool")

  def weights(c_in, c_out):
    w = rng.normal(size=(3, 3, 3, c_in, c_out)) / np.sqrt(27 * c_in)
    return jnp.asarray(w, jnp.float32), jnp.asarray(rng.normal(size=(c_out,)) * 0.1, jnp.float32)

  out_rows = 384  # output capacity bound of both convs (dW sums over output rows)
  rows = []
  with jax.default_matmul_precision("highest"), jax.default_device(jax.devices()[0]):
    rows += rows_for("subm conv k3 4->16", subm, st4, weights(4, 16),
                     {"forward": 27 * 4 + 1, "dX": 27 * 16, "dW": out_rows})
    w, b = weights(16, 24)
    n_out = jax.eval_shape(lambda: strided(st16, w, b, "xla").features).shape[0]
    rows += rows_for("conv k3 s2 p1 16->24", strided, st16, (w, b),
                     {"forward": 27 * 16 + 1, "dX": 27 * 24, "dW": n_out})
    rows += rows_for("max pool k2 s2", pool, st16, (), {"forward": 0, "dX": 8})
  return rows
