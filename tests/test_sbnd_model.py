"""Tests of the multi-plane UResNet (recoil_jax.studies.sbnd.model; arXiv 2012.01301 Table 1).

Parameter counts use ``jax.eval_shape`` (no compilation); behaviour is tested on a small
configuration (depth 2, 4 initial filters) so that each compile takes seconds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recoil_jax.studies.sbnd import model as uresnet

SMALL = dict(initial_filters=4, depth=2, first_kernel=3, blocks_per_level=1,
             deepest_filters=8, deepest_blocks=1, deepest_kernel=3)
B, P, H, W = 2, 3, 16, 32  # small images: 16 × 32 is divisible by 2**depth = 4


def _images(seed: int, shape=(B, P, H, W)) -> jnp.ndarray:
  """Sparse, positive, ADC-like random images (zero below a threshold, as the detector)."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.exponential(k1, shape) * 20.0
  return jnp.where(jax.random.uniform(k2, shape) < 0.2, x, 0.0)


@functools.lru_cache(maxsize=None)
def _shapes_cached(kwargs: tuple, height: int, width: int):
  model = uresnet.UResNet(**dict(kwargs))
  x = jax.ShapeDtypeStruct((1, 3, height, width), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def _shapes(height: int = 64, width: int = 64, **kwargs):
  """Variable shapes of ``UResNet(**kwargs)`` by tracing only (no compilation)."""
  return _shapes_cached(tuple(sorted(kwargs.items())), height, width)


def _rows(**kwargs) -> dict[str, int]:
  return dict(uresnet.table1_rows(_shapes(**kwargs)["params"]))


@functools.lru_cache(maxsize=None)
def _small_cached(kwargs: tuple):
  """(model, variables, jitted train-mode apply) of the small configuration.

  Variables have the shapes of ``model.init`` and its distribution (Xavier-uniform
  kernels, zero biases, BN γ = 1, β = 0, running mean 0, variance 1), drawn with NumPy:
  compiling ``model.init`` costs ~10 CPU-seconds (threefry for every leaf), compiling
  ``apply`` ~1. ``test_initialisation_*`` checks the real initialisers.
  """
  model = uresnet.UResNet(**{**SMALL, **dict(kwargs)})
  shapes = _shapes(16, 16, **{**SMALL, **dict(kwargs)})
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      *taps, c_in, c_out = leaf.shape
      bound = np.sqrt(6.0 / (np.prod(taps) * (c_in + c_out)))
      return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
    fill = 1.0 if name.endswith(("['scale']", "['var']")) else 0.0
    return jnp.full(leaf.shape, fill, jnp.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return model, variables, jax.jit(functools.partial(_train_apply, model))


def _small(**kwargs):
  return _small_cached(tuple(sorted(kwargs.items())))


def _train_apply(model, variables, x):
  return model.apply(variables, x, train=True, mutable=["batch_stats"])


# --- Table 1 ------------------------------------------------------------------------------


def test_table1_rows_of_the_paper_configuration():
  rows = uresnet.table1_rows(_shapes()["params"])
  assert [name for name, _ in rows] == [name for name, _ in uresnet.PAPER_TABLE1]
  got = dict(rows)
  paper = dict(uresnet.PAPER_TABLE1)
  # Every row but "final" as printed in Table 1, and as the formula P(k, Cin, Cout).
  for name in paper:
    if name != "final":
      assert got[name] == paper[name], name
  p = uresnet.conv_parameter_count
  assert got["initial"] == p(7, 1, 8)
  for i in range(6):
    f = 8 * 2 ** i
    assert got[f"down_{i}"] == 4 * p(3, f, f) + p(1, f, 2 * f) == 38 * f * f + 18 * f
    assert got[f"up_{i}"] == p(1, 2 * f, f) + 4 * p(3, f, f) == 38 * f * f + 15 * f
  assert got["deepest_bottleneck_in"] == p(1, 1536, 256)
  assert got["deepest_blocks"] == 10 * p(5, 256, 256)
  assert got["deepest_bottleneck_out"] == p(1, 256, 1536)
  # Final-row discrepancy (documented in the module docstring): Table 1's 57 = 3·(16 + 3)
  # needs 16 input channels and BN, which no reference code version has; the reference's
  # final layer is a plain 1×1 conv 8 → 3 with bias, 8·3 + 3 = 27 parameters.
  assert paper["final"] == p(1, 16, 3) == 57
  assert got["final"] == 8 * 3 + 3 == 27
  total = sum(got.values())
  assert total == uresnet.PAPER_TABLE1_TOTAL - 57 + 27 == 23_839_923
  assert sum(paper.values()) == uresnet.PAPER_TABLE1_TOTAL


def test_batch_stats_are_per_plane_except_cross_plane_deepest():
  stats = _shapes()["batch_stats"]
  assert stats["encoder"]["initial"]["bn"]["mean"].shape == (3, 8)
  assert stats["decoder"]["up_0"]["blocks"]["res_1"]["block_1"]["bn"]["var"].shape == (3, 8)
  assert stats["deepest"]["bottleneck_in"]["bn"]["mean"].shape == (256,)
  blocked = _shapes(cross_plane=False)["batch_stats"]
  assert blocked["deepest"]["bottleneck_in"]["bn"]["mean"].shape == (3, 256)
  # BN running statistics are not parameters (Table 1 counts only γ, β).
  params = _shapes()["params"]
  assert "mean" not in params["encoder"]["initial"]["bn"]


def test_variants_change_parameter_counts_as_expected():
  base = _rows()
  filters = [8 * 2 ** i for i in range(6)]
  p = uresnet.conv_parameter_count

  concat = _rows(connections="concat")
  for i, f in enumerate(filters):  # concat + Block(1×1, 2F → F) per up level
    assert concat[f"up_{i}"] - base[f"up_{i}"] == f * (2 * f + 3)
  assert {k: v for k, v in concat.items() if not k.startswith("up_")} == {
      k: v for k, v in base.items() if not k.startswith("up_")}

  conv_up = _rows(upsampling="convolutional")
  for i, f in enumerate(filters):  # ConvTranspose 2×2 2F → F (+ BN) replaces 1×1 2F → F
    assert conv_up[f"up_{i}"] - base[f"up_{i}"] == p(2, 2 * f, f) - p(1, 2 * f, f) == 6 * f * f

  blocked = _rows(cross_plane=False)
  assert blocked["deepest_bottleneck_in"] == p(1, 512, 256)
  assert blocked["deepest_bottleneck_out"] == p(1, 256, 512)
  assert blocked["deepest_blocks"] == base["deepest_blocks"]

  half = _rows(initial_filters=4)
  assert half["initial"] == p(7, 1, 4)
  for i in range(6):
    f = 4 * 2 ** i
    assert half[f"down_{i}"] == 38 * f * f + 18 * f
  assert half["deepest_bottleneck_in"] == p(1, 3 * 256, 256)

  plain = _rows(residual=False)  # reference BlockSeries: one conv per block
  for i, f in enumerate(filters):
    assert plain[f"down_{i}"] == 2 * p(3, f, f) + p(1, f, 2 * f)
    assert plain[f"up_{i}"] == p(1, 2 * f, f) + 2 * p(3, f, f)
  assert plain["deepest_blocks"] == 5 * p(5, 256, 256)


def test_paper_configuration_output_shape_at_small_size():
  model = uresnet.UResNet()
  variables = _shapes()
  x = jax.ShapeDtypeStruct((2, 3, 64, 128), jnp.float32)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert out.shape == (2, 3, 64, 128, 3) and out.dtype == jnp.float32
  bf16 = uresnet.UResNet(dtype=jnp.bfloat16)
  out = jax.eval_shape(functools.partial(bf16.apply, train=False), variables, x)
  assert out.dtype == jnp.float32
  # As the shared trainer calls it: train mode, a "dropout" stream, mutable batch_stats.
  out, state = jax.eval_shape(
      lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key},
                                    mutable=["batch_stats"]),
      variables, x, jax.random.PRNGKey(1))
  assert out.shape == (2, 3, 64, 128, 3)
  assert jax.tree.map(lambda a: a.shape, state["batch_stats"]) == jax.tree.map(
      lambda a: a.shape, variables["batch_stats"])


@pytest.mark.slow
def test_paper_configuration_runs_at_small_size():
  """The full depth-6 network, executed (≈ 15–40 s of compilation on a 2-core CPU)."""
  model = uresnet.UResNet()
  x = _images(1, (1, 3, 64, 128))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
  out, state = jax.jit(functools.partial(_train_apply, model))(variables, x)
  assert out.shape == (1, 3, 64, 128, 3)
  assert np.all(np.isfinite(out))
  assert state["batch_stats"]["deepest"]["blocks"]["res_4"]["block_1"]["bn"]["mean"].shape == (
      256,)


def test_forward_flops_match_the_convolutions_in_the_graph():
  """Analytic conv FLOPs == 2·MACs summed over every conv in the traced graph (reference)."""

  def graph_conv_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        c_in = rhs[dn.rhs_spec[1]]
        taps = np.prod([rhs[d] for d in dn.rhs_spec[2:]])
        # A transposed conv is a conv over a zero-dilated input: count non-zero taps only.
        dilation = np.prod(eqn.params["lhs_dilation"])
        total += 2.0 * np.prod(out) * c_in * taps / dilation
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            total += graph_conv_flops(inner)
    return total

  for kwargs in (dict(), dict(connections="concat", upsampling="convolutional"),
                 dict(cross_plane=False, residual=False)):
    # Plain convolutions: the patch matmuls of small_map_convs compute the same function
    # without conv_general_dilated (fewer FLOPs on maps smaller than the kernel).
    model = uresnet.UResNet(**{**SMALL, **kwargs}, small_map_convs=False)
    variables = _shapes(16, 16, **SMALL, **kwargs)
    x = jax.ShapeDtypeStruct((1, 3, 32, 64), jnp.float32)
    jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
    assert uresnet.forward_flops(model, 32, 64)["total"] == pytest.approx(
        graph_conv_flops(jaxpr.jaxpr), rel=1e-12), kwargs


def test_forward_flops_of_the_paper_configuration():
  # The computed 118.9 GFLOP per event at 3 × 640 × 1024 (arXiv 2012.01301 prints no FLOP
  # count) is reproduced with a 5 × 5 first conv (CosmicTagger torch master); the paper's
  # 7 × 7 adds 2·(49 − 25)·8·640·1024·3 FLOP.
  five = uresnet.forward_flops(uresnet.UResNet(first_kernel=5), 640, 1024)["total"]
  seven = uresnet.forward_flops(uresnet.UResNet(), 640, 1024)["total"]
  assert round(five / 1e9, 1) == uresnet.PAPER_FORWARD_GFLOP
  assert seven - five == 2 * (49 - 25) * 8 * 640 * 1024 * 3
  assert seven / 1e9 == pytest.approx(119.62, abs=0.01)


# --- behaviour on a small configuration ---------------------------------------------------


def test_initialisation_xavier_uniform_kernels_zero_biases():
  norm = uresnet._Norm(False, 0.01, 0.9, 1e-5, jnp.float32, None)  # pylint: disable=protected-access
  x = jnp.ones((1, 4, 4, 64))
  for module in (uresnet.Block(64, 3, norm),
                 uresnet.UpLevel(1, True, "sum", "convolutional", norm)):
    args = (x,) if isinstance(module, uresnet.Block) else (x, jnp.ones((1, 8, 8, 32)))
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), *args)
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
      name = jax.tree_util.keystr(path)
      if name.endswith("['kernel']"):
        *taps, c_in, c_out = leaf.shape
        bound = np.sqrt(6.0 / (np.prod(taps) * (c_in + c_out)))
        kernel = np.asarray(leaf)
        assert np.abs(kernel).max() <= bound, name
        assert np.abs(kernel).max() > 0.98 * bound, name
        assert kernel.var() == pytest.approx(bound ** 2 / 3, rel=0.1), name  # U(−a, a): a²/3
      elif name.endswith("['scale']"):
        assert np.all(leaf == 1.0), name
      else:  # conv biases and BN β
        assert not np.any(leaf), name


def test_output_shape_dtype_and_finite():
  for kwargs in (dict(), dict(connections="concat", upsampling="convolutional"),
                 dict(residual=False, cross_plane=False)):
    _, variables, run = _small(**kwargs)
    out, _ = run(variables, _images(1))
    assert out.shape == (B, P, H, W, 3) and out.dtype == jnp.float32, kwargs
    assert np.all(np.isfinite(out)), kwargs
    assert np.asarray(out).std() > 0, kwargs


def test_per_plane_batch_norm_statistics():
  _, variables, run = _small()
  x = _images(2) * jnp.asarray([1.0, 3.0, 10.0])[None, :, None, None]  # planes differ
  _, state = run(variables, x)
  mean = np.asarray(state["batch_stats"]["encoder"]["initial"]["bn"]["mean"])
  var = np.asarray(state["batch_stats"]["encoder"]["initial"]["bn"]["var"])
  assert mean.shape == (P, 4)
  # Slow reference: the initial conv of each plane on its own, by lax.conv, and the Flax
  # running-average update m·old + (1 − m)·batch with old mean 0 and old variance 1.
  conv = variables["params"]["encoder"]["initial"]["conv"]
  for p in range(P):
    y = jax.lax.conv_general_dilated(
        x[:, p, :, :, None], conv["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
    batch_mean = np.asarray(y.mean(axis=(0, 1, 2)))
    batch_var = np.asarray(y.var(axis=(0, 1, 2)))
    np.testing.assert_allclose(mean[p], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var[p], 0.9 + 0.1 * batch_var, rtol=1e-4, atol=1e-6)
  assert not np.allclose(mean[0], mean[2], rtol=0.1)


def test_plane_outputs_depend_only_on_their_plane_when_cross_plane_blocked():
  """Per-plane BN + shared weights: with cross_plane=False planes are independent networks.

  Pooled BN statistics (planes folded into the batch) would make plane 0's output depend
  on the other planes; the cross-plane network must depend on them (negative control).
  """
  x = _images(3)
  y = x.at[:, 1:].set(_images(4)[:, 1:] * 5.0)  # other planes replaced
  for cross_plane in (False, True):
    _, variables, run = _small(cross_plane=cross_plane)
    a, _ = run(variables, x)
    b, _ = run(variables, y)
    same = np.allclose(a[:, 0], b[:, 0], rtol=1e-4, atol=1e-4)
    assert same == (not cross_plane), cross_plane


def test_planes_share_weights_permutation_equivariance():
  perm = jnp.asarray([2, 0, 1])
  x = _images(5)
  for cross_plane in (False, True):
    _, variables, run = _small(cross_plane=cross_plane)
    out, _ = run(variables, x)
    out_perm, _ = run(variables, x[:, perm])
    equivariant = np.allclose(out_perm, out[:, perm], rtol=1e-4, atol=1e-4)
    # Shared weights and per-plane statistics: blocked planes permute with the input; the
    # cross-plane concatenation is ordered (plane-major channels), so it must not.
    assert equivariant == (not cross_plane), cross_plane
  # Eval mode with equal running statistics in every plane: also equivariant.
  model, variables, _ = _small(cross_plane=False)
  ev = jax.jit(functools.partial(model.apply, train=False))
  np.testing.assert_allclose(ev(variables, x[:, perm]), ev(variables, x)[:, perm],
                             rtol=1e-4, atol=1e-4)


def test_cross_replica_batch_norm_equals_full_batch():
  """bn_axis_name: BN over 2 shards of a mapped axis == BN over the whole batch."""
  x = _images(6, (2 * B, P, H, W))
  _, variables, run = _small()
  full, full_state = run(variables, x)
  m = uresnet.UResNet(**SMALL, bn_axis_name="data")
  sharded, state = jax.jit(jax.vmap(functools.partial(_train_apply, m), in_axes=(None, 0),
                                    axis_name="data"))(variables, x.reshape(2, B, P, H, W))
  np.testing.assert_allclose(sharded.reshape(full.shape), full, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state)):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-6)
  # Negative control: each shard normalised with its own statistics differs.
  local = np.concatenate([run(variables, x[:B])[0], run(variables, x[B:])[0]])
  assert not np.allclose(local, full, rtol=1e-4, atol=1e-4)


def test_bfloat16_close_to_float32():
  """bf16 compute vs fp32 with the same parameters.

  bf16 keeps 8 significand bits: each rounding has relative error ≤ 2⁻⁹ ≈ 0.2 %. The
  small network has ~15 sequential conv/BN/activation stages whose rounding errors add
  roughly in quadrature (BN keeps activations O(1)), so a relative L2 error of about one
  per cent of the logits' spread is expected; 5 % is the bound. Argmax agreement is
  checked on pixels whose top-2 logit gap exceeds 20 % of the logits' spread.
  """
  _, variables, run = _small()
  x = _images(7)
  f32, _ = run(variables, x)
  _, _, run16 = _small(dtype=jnp.bfloat16)
  b16, state16 = run16(variables, x)
  assert b16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state16))
  f32, b16 = np.asarray(f32), np.asarray(b16)
  err = np.linalg.norm(b16 - f32) / np.linalg.norm(f32 - f32.mean())
  assert 0 < err < 0.05
  top2 = np.sort(f32, axis=-1)
  confident = top2[..., -1] - top2[..., -2] > 0.2 * f32.std()
  assert confident.mean() > 0.3
  assert np.all(f32.argmax(-1)[confident] == b16.argmax(-1)[confident])


@pytest.mark.slow  # ~12 s; the SBND launcher smoke run and test_conv_small_maps keep
# gradients and training steps of the UResNet in the default suite.
def test_gradient_finite_and_rmsprop_step_lowers_the_loss():
  model, variables, _ = _small()
  x = _images(8)
  labels = jax.random.randint(jax.random.PRNGKey(9), (B, P, H, W), 0, 3)
  weights = jnp.asarray([1.0, 1.5, 10.0])[labels]

  def loss_fn(params):
    logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                x, train=True, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    per_plane = (weights * ce).sum((0, 2, 3)) / weights.sum((0, 2, 3))
    return per_plane.sum(), state

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, _), grads = grad_fn(variables["params"])
  assert np.isfinite(loss)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert all(np.any(g != 0) for g in leaves)  # every parameter receives a gradient
  opt = optax.rmsprop(1e-3)
  updates, _ = opt.update(grads, opt.init(variables["params"]))
  (loss2, _), _ = grad_fn(optax.apply_updates(variables["params"], updates))
  assert loss2 < loss


def test_bilinear_upsampling_matches_jax_image_resize():
  x = jax.random.normal(jax.random.PRNGKey(10), (2, 5, 7, 3))
  fast = jax.jit(uresnet.upsample_bilinear_2x)(x)
  slow = jax.jit(lambda x: jax.image.resize(x, (2, 10, 14, 3), "bilinear"))(x)
  np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)
  xb = jax.ShapeDtypeStruct(x.shape, jnp.bfloat16)
  assert jax.eval_shape(uresnet.upsample_bilinear_2x, xb).dtype == jnp.bfloat16


def test_bad_inputs_raise_clear_errors():
  model = uresnet.UResNet(**SMALL)
  with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 4"):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((1, 3, 18, 32), jnp.float32))
  with pytest.raises(ValueError, match=r"\[batch, planes, height, width\]"):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((3, 16, 32), jnp.float32))
  for field, value in (("connections", "product"), ("upsampling", "nearest")):
    bad = uresnet.UResNet(**SMALL, **{field: value})
    with pytest.raises(ValueError, match=f"UResNet.{field}="):
      jax.eval_shape(functools.partial(bad.init, train=False), jax.random.PRNGKey(0),
                     jax.ShapeDtypeStruct((1, 3, 16, 32), jnp.float32))


# The second variant (BN + LeakyReLU after a ConvTranspose, plain blocks) is slow-marked:
# ~11 s, and tests/test_batch_norm.py covers each BatchNorm form on its own.
@pytest.mark.parametrize("variant", [
    {}, pytest.param({"upsampling": "convolutional", "residual": False},
                     marks=pytest.mark.slow)])
def test_fused_batch_norm_equals_flax_batch_norm(variant):
  """fused_batch_norm (closed-form BN + LeakyReLU gradient) vs flax's BatchNorm: same logits,
  batch statistics and parameter gradients, on the whole small network."""
  x = _images(11)
  labels = jax.random.randint(jax.random.PRNGKey(12), (B, P, H, W), 0, 3)
  results = []
  for fused in (True, False):
    model, variables, _ = _small(fused_batch_norm=fused, **variant)
    # Non-trivial BN parameters and running statistics (γ = 1, β = 0 hide sign errors).
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda v: v + jnp.asarray(rng.normal(size=v.shape) * 0.2,
                                                       v.dtype), variables)

    def loss_fn(params, model=model, variables=variables):
      logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                  x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits,
                                                                                      state)

    results.append(jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"]))
  ((loss_a, (logits_a, state_a)), grads_a), ((loss_b, (logits_b, state_b)), grads_b) = results
  # float32 through ~10 normalised stages: differences are rounding of the reductions.
  np.testing.assert_allclose(logits_a, logits_b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(grads_a) == jax.tree.structure(grads_b)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_a), jax.tree.leaves(grads_b)):
    a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
    if name.endswith(("['conv']['bias']", "['upconv']['bias']")):
      # A bias before BatchNorm cancels in the normalisation: its gradient is 0 up to rounding
      # (~1e-8 measured for both forms).
      assert np.abs(a).max() < 1e-6 and np.abs(b).max() < 1e-6, name
      continue
    # Measured: at most 1e-6 of the leaf's largest entry (float32 sums in another order).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()),
                               err_msg=name)
