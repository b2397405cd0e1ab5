"""scripts/bench_spherical.py: e3nn-jax's route runs and passes its checks (tiny L).

Skipped where e3nn-jax (the ``peers`` extra) is not installed. In-process, no timing
loops: the check (agreement with the project's N = 1 layer, use_s2fft vs default,
equivariance) and one jitted forward + backward of the route, at L = 4.
"""


import numpy as np
import pytest

from conftest import load_module

pytest.importorskip("e3nn_jax")


@pytest.fixture(scope="module")
def bench():
  return load_module("scripts/bench_spherical.py")


def test_e3nn_route_matches_project_n1_and_is_equivariant(bench):
  res = bench._e3nn_check({"L": 4})  # pylint: disable=protected-access
  assert res["passed"], res
  assert res["agree_rel"] < 1e-5 and res["equivariance_rel"] < 1e-5
  assert res["equivariance_control_rel"] > 0.1  # The check does see an unrotated output.


def test_e3nn_route_forward_backward(bench):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  L, (c_in, c_out) = 4, bench.S2_CHANNELS
  init, apply, _, _ = bench._e3nn_route(L, c_out)  # pylint: disable=protected-access
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2 * L, 2 * L - 1, c_in)),
                  jnp.float32)
  params = jax.jit(init)(jax.random.PRNGKey(0), x)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.square(apply(p, x)))))(params)
  assert jax.jit(apply)(params, x).shape == (1, 2 * L, 2 * L - 1, c_out)
  leaves = jax.tree_util.tree_leaves(grads)
  assert len(leaves) == L  # One [C_in, C_out] weight per degree ℓ < L.
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in leaves)
