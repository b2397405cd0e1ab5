"""The GPU self-check behind ``backend="auto"`` (recoil_jax/ops/sparse/pallas/selfcheck.py), on CPU.

`dispatch.on_gpu` is patched so that the dispatch believes it runs on a GPU; the self-check then runs
the Pallas kernels in the interpreter (JAX's real backend is the CPU) against the XLA path. Cases: the
kernels work (auto -> pallas, one check), raise (one warning, auto -> xla, no second check or
warning), or return wrong numbers (a kernel patched to add 1e-2: auto -> xla); resolution inside
jit / grad / vmap / shard_map traces and from several threads; the opt-out environment variable; and
no check at all on a CPU without the patch. The first check compiles the interpreted kernels (~15 CPU
seconds); later ones reuse them (the cache is reset between tests, the compiled kernels are not).
"""

from __future__ import annotations

import logging
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.ops import sparse as sp
from recoil_jax.ops.sparse.pallas import conv, dispatch, selfcheck

LOGGER = selfcheck.__name__


@pytest.fixture
def fake_gpu(monkeypatch):
  """The dispatch sees a GPU; fresh self-check state; the opt-out variable unset."""
  monkeypatch.setattr(dispatch, "on_gpu", lambda: True)
  monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
  selfcheck.reset()
  yield
  selfcheck.reset()


@pytest.fixture
def runs(monkeypatch):
  """Counts the self-checks that run (the list grows by one per check)."""
  calls = []
  real = selfcheck.run_selfcheck

  def counted(*args, **kwargs):
    calls.append(threading.current_thread().name)
    return real(*args, **kwargs)

  monkeypatch.setattr(selfcheck, "run_selfcheck", counted)
  return calls


def _warnings(caplog):
  return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.slow  # ~14 s (interpreted Pallas); the fallback tests stay in the default suite.
def test_auto_uses_pallas_when_the_check_passes(fake_gpu, runs, caplog):
  with caplog.at_level(logging.INFO, logger=LOGGER):
    assert dispatch.resolve_backend("auto") == ("pallas", False)
    assert dispatch.resolve_backend("auto", where="second layer") == ("pallas", False)
  assert len(runs) == 1
  status = sp.pallas_status()
  assert status is not None and status.ok and status.interpret and not status.skipped
  names = [r.name for r in status.rows]
  assert len(names) == 11 and all(r.ok for r in status.rows), names
  for op in ("subm conv", "conv k3 s2", "max pool"):
    assert any(n.startswith(op) and n.endswith("dX") for n in names), op
  # Correct kernels sit far below the worst-case float32 bound (measured ~0.014 of it), and max
  # pooling is exact.
  assert status.max_ratio < 0.2, status.summary()
  assert all(r.max_abs == 0 for r in status.rows if r.name.startswith("max pool"))
  assert not _warnings(caplog)
  assert any("self-check passed" in r.getMessage() for r in caplog.records)


def test_failing_pallas_path_falls_back_once(fake_gpu, runs, monkeypatch, caplog):
  def broken(*args, **kwargs):
    raise RuntimeError("Triton compilation failed (simulated)")

  monkeypatch.setattr(conv, "conv_features", broken)
  with caplog.at_level(logging.INFO, logger=LOGGER):
    assert dispatch.resolve_backend("auto") == ("xla", False)
  assert len(runs) == 1
  warnings = _warnings(caplog)
  assert len(warnings) == 1
  message = warnings[0].getMessage()
  assert "self-check FAILED" in message and "RuntimeError: Triton compilation failed" in message
  assert "falls back to the XLA path" in message and selfcheck.ENV_VAR in message
  status = sp.pallas_status()
  assert not status.ok and "Triton compilation failed" in status.error
  assert "Traceback" in status.traceback
  # An explicit request is obeyed, with one warning (not one per layer).
  caplog.clear()
  with caplog.at_level(logging.INFO, logger=LOGGER):
    assert dispatch.resolve_backend("pallas", where="layer A") == ("pallas", False)
    assert dispatch.resolve_backend("pallas", where="layer B") == ("pallas", False)
    with dispatch.use_backend("pallas"):
      assert dispatch.resolve_backend("auto") == ("pallas", False)
  warnings = _warnings(caplog)
  assert len(warnings) == 1 and "layer A: backend='pallas' was requested explicitly" in \
      warnings[0].getMessage()
  assert len(runs) == 1


def test_wrong_numbers_fall_back(fake_gpu, runs, monkeypatch, caplog):
  real = conv.gather_matmul  # forward and dX of the conv kernels; dW is another kernel
  monkeypatch.setattr(conv, "gather_matmul", lambda *a, **k: real(*a, **k) + 1e-2)
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    assert dispatch.resolve_backend("auto") == ("xla", False)
  status = sp.pallas_status()
  assert not status.ok and status.error is None
  failed = {r.name for r in status.rows if not r.ok}
  assert failed == {"subm conv k3 4->16 forward", "subm conv k3 4->16 dX",
                    "conv k3 s2 p1 16->24 forward", "conv k3 s2 p1 16->24 dX"}, failed
  assert min(r.ratio for r in status.rows if not r.ok) > 10
  (warning,) = _warnings(caplog)
  assert "conv k3 s2 p1 16->24 forward: max |pallas - xla| 0.01" in warning.getMessage()
  assert "x the float32 bound" in warning.getMessage()
  assert dispatch.resolve_backend("auto") == ("xla", False) and len(runs) == 1


def _tiny_tensor():
  x = np.zeros((1, 4, 4, 4, 2), np.float32)
  x[0, 1, 2, 1] = (1.0, -2.0)
  x[0, 2, 2, 1] = (0.5, 3.0)
  x[0, 3, 0, 2] = (-1.0, 1.0)
  return sp.from_dense(jnp.asarray(x), 8)


def test_resolution_inside_traces(fake_gpu, runs):
  """The check runs (once) at trace time inside jit, grad, vmap and jit(shard_map), eagerly in its
  own thread; the traced functions compile and run."""
  seen = []

  def f(x):
    seen.append(dispatch.resolve_backend("auto"))
    return 2.0 * x

  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec("data")
  traced = {
      "jit": lambda: jax.jit(f)(1.0),
      "grad": lambda: jax.grad(f)(1.0),
      "vmap": lambda: jax.vmap(f)(jnp.ones(2)),
      "jit(shard_map)": lambda: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec))(
          jnp.ones(2)),
  }
  for name, call in traced.items():
    selfcheck.reset()
    before = len(runs)
    out = call()
    assert np.all(np.asarray(out) == 2.0), name
    assert seen[-1] == ("pallas", False) and len(runs) == before + 1, name
    assert sp.pallas_status().ok, (name, sp.pallas_status().summary())
    assert all(type(r.ratio) is float for r in sp.pallas_status().rows), name  # concrete, no tracers


class _Net(nn.Module):
  @nn.compact
  def __call__(self, st):
    st = sp.SubMConv3d(8, 3)(st).map_features(nn.relu)
    return sp.SparseMaxPool3d(2, out_capacity=8)(st).features


def test_fallback_under_jit_uses_the_xla_path(fake_gpu, runs, monkeypatch, caplog):
  """A failed check during the first jit trace of a model: that trace and later ones use XLA."""
  real = conv.conv_features
  monkeypatch.setattr(conv, "conv_features", lambda *a, **k: 1 / 0)
  st = _tiny_tensor()
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    params = jax.jit(_Net().init)(jax.random.key(0), st)
    jaxpr = str(jax.make_jaxpr(_Net().apply)(params, st))
  assert len(runs) == 1 and len(_warnings(caplog)) == 1
  assert "ZeroDivisionError" in _warnings(caplog)[0].getMessage()
  assert params["params"]["SubMConv3d_0"]["kernel"].shape == (3, 3, 3, 2, 8)
  assert "pallas_call" not in jaxpr and "gather" in jaxpr
  monkeypatch.setattr(conv, "conv_features", real)
  with dispatch.use_backend("pallas", interpret=True):  # the control: Pallas calls are visible
    assert "pallas_call" in str(jax.make_jaxpr(_Net().apply)(params, st))


def test_concurrent_first_resolutions_check_once(fake_gpu, runs):
  results, errors = [], []

  def resolve():
    try:
      results.append(dispatch.resolve_backend("auto"))
    except Exception as e:  # noqa: BLE001
      errors.append(e)

  threads = [threading.Thread(target=resolve) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and results == [("pallas", False)] * 4
  assert len(runs) == 1


def test_a_hanging_check_times_out(fake_gpu, monkeypatch, caplog):
  release = threading.Event()
  monkeypatch.setattr(selfcheck, "_compare", lambda interpret, seed: release.wait(30) and [])
  monkeypatch.setattr(selfcheck, "TIMEOUT_S", 0.2)
  try:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
      assert dispatch.resolve_backend("auto") == ("xla", False)
  finally:
    release.set()  # lets the abandoned thread finish
  (warning,) = _warnings(caplog)
  assert "TimeoutError: the self-check did not finish in 0.2 s" in warning.getMessage()


@pytest.mark.parametrize("value", ["0", "false", "OFF"])
def test_opt_out_skips_the_check(fake_gpu, runs, monkeypatch, value):
  monkeypatch.setenv(selfcheck.ENV_VAR, value)
  assert dispatch.resolve_backend("auto") == ("pallas", False)
  assert not runs
  status = sp.pallas_status()
  assert status.ok and status.skipped and "skipped" in status.summary()


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU behaviour")
def test_cpu_auto_is_xla_without_a_check(monkeypatch, runs):
  selfcheck.reset()
  monkeypatch.setattr(selfcheck, "auto_may_use_pallas", lambda: 1 / 0)  # must not be called
  assert dispatch.resolve_backend("auto") == ("xla", False)
  assert dispatch.resolve_backend("pallas", interpret=True) == ("pallas", True)
  assert sp.pallas_status() is None and not runs
