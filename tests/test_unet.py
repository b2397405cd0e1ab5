"""recoil_jax.nn.unet: shapes, parameter counts, the attention gate formula, gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.nn import unet


def _init(model, shape, seed=0):
  """(input, variables): shapes from ``eval_shape``, values from numpy.

  ``model.init`` is avoided on purpose: compiling its random initialisers takes 10–20 s on
  a 2-core CPU, the forward pass well under one.
  """
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          x)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name.rsplit("[", 1)[-1]:
      return jnp.ones(s.shape, s.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype)

  return x, jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))


def _expected_counts(kind, c_in, filters, classes):
  """(params, batch_stats) by hand, from the module docstring's layer list."""
  opts = unet.unet_options(kind)
  params = stats = 0

  def conv_bn(cin, cout, k=3):
    nonlocal params, stats
    params += k * k * cin * cout + 2 * cout  # No conv bias; BN scale and shift.
    stats += 2 * cout  # Running mean and variance.

  def block(cin, f):
    conv_bn(cin, f)
    conv_bn(f, f)
    if opts["block"] == "residual" and cin != f:
      conv_bn(cin, f, k=1)

  depth = len(filters) - 1
  cin = c_in
  for i in range(depth):
    block(cin, filters[i])
    cin = filters[i]
  block(filters[depth - 1], filters[depth])
  for i in range(depth):
    params += 4 * filters[i + 1] * filters[i] + filters[i]  # ConvTranspose 2×2 + bias.
    if opts["attention"]:
      f_int = max(1, filters[i] // 2)
      params += 4 * filters[i] * f_int  # W_x: 2×2 stride 2, no bias.
      params += filters[i + 1] * f_int + f_int  # W_g + b_g.
      params += f_int + 1  # ψ + b_ψ.
    block(2 * filters[i], filters[i])
  params += filters[0] * classes + classes
  return params, stats


@pytest.mark.parametrize("kind", unet.KINDS)
def test_shapes_and_parameter_counts(kind):
  filters, classes = (4, 8, 16), 3
  model = unet.make_unet(kind, num_classes=classes, filters=filters)
  x, variables = _init(model, (2, 16, 24, 2))
  assert set(variables) == {"params", "batch_stats"}
  p, s = _expected_counts(kind, 2, filters, classes)
  assert _count(variables["params"]) == p
  assert _count(variables["batch_stats"]) == s
  logits, alphas = jax.jit(functools.partial(model.apply, train=False,
                                             return_attention=True))(variables, x)
  assert logits.shape == (2, 16, 24, classes) and logits.dtype == jnp.float32
  if kind == "attresunet":
    assert [a.shape for a in alphas] == [(2, 16, 24, 1), (2, 8, 12, 1)]
    assert all(float(a.min()) > 0 and float(a.max()) < 1 for a in alphas)
  else:
    assert alphas == []
  # Training mode updates the running statistics.
  _, new = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(new["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_parameter_count_of_a_larger_net_by_hand():
  # One number written out: UNet (1 → 8, 16; 2 classes), plain blocks.
  # down_0: 9·1·8 + 16 + 9·8·8 + 16 = 680; bottom: 9·8·16 + 32 + 9·16·16 + 32 = 3520;
  # upconv: 4·16·8 + 8 = 520; up_0: 9·16·8 + 16 + 9·8·8 + 16 = 1760; head: 8·2 + 2 = 18.
  model = unet.make_unet("unet", num_classes=2, filters=(8, 16))
  _, variables = _init(model, (1, 8, 8, 1))
  assert _count(variables["params"]) == 680 + 3520 + 520 + 1760 + 18


def _bilinear_2x(a):
  """Half-pixel bilinear ×2 with clamped edges along axes 1 and 2 (numpy)."""
  for axis in (1, 2):
    prev = np.concatenate([np.take(a, [0], axis), np.take(a, range(a.shape[axis] - 1), axis)],
                          axis)
    nxt = np.concatenate([np.take(a, range(1, a.shape[axis]), axis),
                          np.take(a, [a.shape[axis] - 1], axis)], axis)
    even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
    shape = list(a.shape)
    shape[axis] *= 2
    a = np.stack([even, odd], axis + 1).reshape(shape)
  return a


@pytest.mark.parametrize("factor", [1, 2])
def test_attention_gate_against_the_formula(factor):
  rng = np.random.default_rng(0)
  b, h, w, fx, fg = 2, 8, 6, 6, 5
  x = rng.standard_normal((b, h, w, fx)).astype(np.float32)
  g = rng.standard_normal((b, h // factor, w // factor, fg)).astype(np.float32)
  gate = unet.AttentionGate()
  shapes = jax.eval_shape(gate.init, jax.random.PRNGKey(0), x, g)
  # Random kernels and non-zero biases, so b_g and b_ψ are exercised.
  params = jax.tree_util.tree_map(
      lambda v: jnp.asarray(0.5 * rng.standard_normal(v.shape) + 0.1, v.dtype),
      shapes["params"])
  out, alpha = gate.apply({"params": params}, x, g)
  wx = np.asarray(params["w_x"]["kernel"], np.float64)  # [s, s, F_x, F_int]
  wg = np.asarray(params["w_g"]["kernel"], np.float64)[0, 0]  # [F_g, F_int]
  bg = np.asarray(params["w_g"]["bias"], np.float64)
  psi = np.asarray(params["psi"]["kernel"], np.float64)[0, 0]  # [F_int, 1]
  bpsi = np.asarray(params["psi"]["bias"], np.float64)
  s = factor
  patches = x.astype(np.float64).reshape(b, h // s, s, w // s, s, fx)
  theta = np.einsum("bhiwjc,ijcf->bhwf", patches, wx)  # W_xᵀ x on g's grid.
  q = np.maximum(theta + g.astype(np.float64) @ wg + bg, 0.0) @ psi + bpsi
  a = 1.0 / (1.0 + np.exp(-q))
  if s == 2:
    a = _bilinear_2x(a)
  assert wx.shape[-1] == fx // 2
  np.testing.assert_allclose(np.asarray(alpha), a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out), a * x, rtol=1e-5, atol=1e-6)


def test_gradients_finite_and_errors():
  model = unet.make_unet("attresunet", num_classes=2, filters=(2, 4))
  x, variables = _init(model, (2, 8, 8, 1))
  labels = (x[..., 0] > 0.5).astype(jnp.int32)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 2), -1))

  grads = jax.jit(jax.grad(loss))(variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  # Every gate parameter receives a gradient.
  for name in ("w_x", "w_g", "psi"):
    assert float(jnp.abs(grads["gate_0"][name]["kernel"]).sum()) > 0
  with pytest.raises(ValueError, match="divisible by 2\\^depth"):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                   jnp.zeros((1, 9, 16, 1)))
  with pytest.raises(ValueError, match="kind"):
    unet.make_unet("segnet", num_classes=2, filters=(4, 8))
