"""`nn.batch_norm.BatchNormAct` against flax's BatchNorm (+ LeakyReLU): values, gradients, state."""

import functools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import pytest

from conftest import REPO_ROOT, subprocess_env
from recoil_jax.nn import batch_norm


class Norm(nn.Module):
  """BatchNorm (momentum 0.9) then LeakyReLU(slope) unless None: ours (fused) or flax's."""
  slope: float | None
  train: bool
  axis_name: str | None = None
  fused: bool = True

  @nn.compact
  def __call__(self, x):
    if self.fused:
      return batch_norm.BatchNormAct(use_running_average=not self.train, momentum=0.9,
                                     epsilon=1e-5, activation_slope=self.slope,
                                     axis_name=self.axis_name, name="bn")(x)
    y = nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5,
                     axis_name=self.axis_name, name="bn")(x)
    return y if self.slope is None else nn.leaky_relu(y, self.slope)


def _inputs(shape=(2, 5, 7, 4), seed=0):
  rng = np.random.default_rng(seed)
  # An offset and per-channel scales, so the statistics matter.
  x = rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1]) + rng.normal(size=shape[-1])
  return jnp.asarray(x, jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32)


def _perturbed(variables, seed=1):
  """Non-trivial scale, bias and running statistics (the initial ones hide sign errors)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda v: jnp.asarray(v + rng.normal(size=v.shape) * 0.3, v.dtype) if
                      v.ndim else v, variables)


@pytest.mark.parametrize("slope", [None, 0.01, 0.3])
def test_training_mode_matches_flax_values_gradients_and_running_stats(slope):
  x, r = _inputs()
  ref, new = Norm(slope, True, fused=False), Norm(slope, True)
  variables = _perturbed(ref.init(jax.random.PRNGKey(0), x))
  assert jax.tree.structure(variables) == jax.tree.structure(new.init(jax.random.PRNGKey(0), x))

  def loss(module, params, x):
    y, state = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
    return jnp.sum(y * r), (y, state)

  (l_ref, (y_ref, s_ref)), g_ref = jax.value_and_grad(
      functools.partial(loss, ref), argnums=(0, 1), has_aux=True)(variables["params"], x)
  (l_new, (y_new, s_new)), g_new = jax.jit(jax.value_and_grad(
      functools.partial(loss, new), argnums=(0, 1), has_aux=True))(variables["params"], x)
  # float32, |x| ~ 3, 70 elements per channel: differences are float32 rounding of sums
  # (measured: outputs 5e-7, gradients 3e-7 of each leaf's largest entry).
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose(l_new, l_ref, rtol=1e-6, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
  for a, b in zip(jax.tree.leaves(s_new), jax.tree.leaves(s_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_gradient_agrees_with_finite_differences_in_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(3, 4, 2)) * 2 + 1)
    scale = jnp.asarray(rng.normal(size=2))
    bias = jnp.asarray(rng.normal(size=2))

    def f(x, scale, bias):
      y, _, _ = batch_norm.batch_norm_act(x, scale, bias, 1e-5, 0.2, None)
      return jnp.sum(jnp.sin(y))

    jax.test_util.check_grads(f, (x, scale, bias), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_eval_mode_matches_flax():
  x, _ = _inputs()
  ref, new = Norm(0.01, False, fused=False), Norm(0.01, False)
  variables = _perturbed(ref.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(new.apply(variables, x), ref.apply(variables, x), rtol=1e-6,
                             atol=1e-6)


def test_bfloat16_input_keeps_its_dtype_and_float32_statistics():
  x, _ = _inputs()
  variables = Norm(0.01, True).init(jax.random.PRNGKey(0), x)
  y, state = Norm(0.01, True).apply(variables, x.astype(jnp.bfloat16), mutable=["batch_stats"])
  y_ref, _ = Norm(0.01, True).apply(variables, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  assert state["batch_stats"]["bn"]["mean"].dtype == jnp.float32
  np.testing.assert_allclose(y.astype(jnp.float32), y_ref, atol=0.05)  # bfloat16: 8-bit mantissa


def test_statistics_outputs_refuse_a_gradient():
  x, _ = _inputs()
  ones = jnp.ones((4,))
  with pytest.raises(ValueError, match="running averages only"):
    jax.grad(lambda x: jnp.sum(batch_norm.batch_norm_act(x, ones, ones * 0, 1e-5, None, None)[1]))(x)


def test_synchronised_statistics_match_flax():
  """axis_name: statistics and the input gradient over all members, parameter gradients local
  (the trainer sums those over devices). A named vmap stands in for the devices."""
  x, r = _inputs(shape=(4, 3, 5, 3))
  x, r = x.reshape(2, 2, 3, 5, 3), r.reshape(2, 2, 3, 5, 3)  # [members, local batch, ...]
  ref, new = Norm(0.01, True, "batch", fused=False), Norm(0.01, True, "batch")
  variables = _perturbed(ref.init(jax.random.PRNGKey(0), x[0]))

  def grads(module):
    def local(params, x, r):
      def loss(params, x):
        y, state = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y * r), state
      return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return jax.jit(jax.vmap(local, in_axes=(None, 0, 0), axis_name="batch"))(
        variables["params"], x, r)

  (g_new, s_new), (g_ref, s_ref) = grads(new), grads(ref)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s_new), jax.tree.leaves(s_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


SHARD_MAP_CHECK = r"""
import json
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from recoil_jax.nn import batch_norm
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)) + 0.5, jnp.float32)
fused = batch_norm.BatchNormAct(activation_slope=0.01, axis_name="data")
flax_bn = nn.BatchNorm(use_running_average=False, axis_name="data")
variables = jax.tree.map(lambda a: a + 0.3, fused.clone(axis_name=None).init(jax.random.key(0), x))
out = {}
for name, module in (("fused", fused), ("flax", flax_bn)):
  for check_vma, varying in ((True, False), (True, True), (False, False)):
    def local(params, x):
      if varying:
        params = jax.tree.map(lambda p: jax.lax.pcast(p, "data", to="varying"), params)
      def loss(params):
        y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y if module is fused else nn.leaky_relu(y, 0.01)))
      g = jax.grad(loss)(params)
      return jax.lax.pmean(g, "data") if varying or not check_vma else g
    g = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(),
                              check_vma=check_vma))(variables["params"], x)
    out[f"{name} {check_vma} {varying}"] = jax.tree.map(lambda a: np.asarray(a).tolist(), g)
print("RESULT" + json.dumps(out))
"""


def test_synchronised_gradients_under_shard_map_match_flax():
  """Under shard_map with its type checks, replicated γ, β get the device sum, as autodiff
  gives flax's BatchNorm; varying ones and unchecked maps keep each device's part."""
  proc = subprocess.run(
      [sys.executable, "-c", SHARD_MAP_CHECK], cwd=REPO_ROOT, capture_output=True, text=True,
      env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  for setting in ("True False", "True True", "False False"):
    for key in ("scale", "bias"):
      np.testing.assert_allclose(out[f"fused {setting}"][key], out[f"flax {setting}"][key],
                                 rtol=1e-5, atol=1e-6, err_msg=setting)
  # The three settings are not all the same number (the check would be empty otherwise).
  assert not np.allclose(out["fused True False"]["scale"], out["fused True True"]["scale"])
