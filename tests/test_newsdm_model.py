"""NEWSnet_3D, the plain 3D CNN, max-norm and the rotation augmentations — the cycled one
against the simulator's own rotated events, with the source study's uncycled rotation as
the negative control."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recoil_jax.studies.newsdm import model as newsdm_model
from recoil_jax.studies.newsdm import sim


def _conv(k, cin, cout):
  return k ** 3 * cin * cout + cout


def _bottleneck(cin, f, project):
  f1, f2, f3 = f
  n = _conv(1, cin, f1) + _conv(3, f1, f2) + _conv(1, f2, f3) + 2 * (f1 + f2 + f3)
  return n + (_conv(3, cin, f3) + 2 * f3 if project else 0)


def test_newsnet3d_parameter_count_follows_the_architecture():
  """Counted from the authors' layer list (module docstring), independently of the code."""
  expected = _conv(3, 1, 32) + _conv(3, 32, 64)
  expected += _bottleneck(64, (64, 64, 256), True) + 3 * _bottleneck(256, (64, 64, 256), False)
  stage2 = (128, 128, 512)
  expected += _bottleneck(256, stage2, True) + 3 * _bottleneck(512, stage2, False)
  expected += 5 * 5 * 1 * 512 * 4 + 4  # 40×40×9 → 38×38×7 → 19×19×3 → 10×10×2 → 5×5×1.
  assert newsdm_model.parameter_count() == expected == 6927044


def test_newsnet3d_output_shapes():
  net = newsdm_model.build("newsnet3d", width=0.125, identity_blocks=1)
  batch = {"image": jnp.zeros((3, 40, 40, 9))}
  out = jax.eval_shape(lambda: net.apply(net.init(jax.random.PRNGKey(1), batch, train=False),
                                         batch, train=False))
  assert out["logits"].shape == (3, 4) and out["signal_logit"].shape == (3,)


def test_signal_logit_is_the_log_odds_of_the_summed_carbon_probabilities():
  net = newsdm_model.build("plain3d", width=0.25)
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(0), (3, 40, 40, 9)) * 0.2}
  variables = jax.jit(lambda b: net.init(jax.random.PRNGKey(1), b, train=False))(batch)
  out = jax.jit(lambda v, b: net.apply(v, b, train=False))(variables, batch)
  assert out["logits"].shape == (3, 4) and out["signal_logit"].shape == (3,)
  p = jax.nn.softmax(out["logits"])
  p_sig = p[:, :3].sum(-1)
  np.testing.assert_allclose(out["signal_logit"], np.log(p_sig / (1 - p_sig)), rtol=1e-4,
                             atol=1e-5)


def test_max_norm_bounds_the_applied_kernel():
  conv = newsdm_model.MaxNormConv(4, max_norm=4.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 5, 3))
  v = conv.init(jax.random.PRNGKey(1), x)
  big = jax.tree.map(lambda a: a * 100.0, v)
  kernel = big["params"]["kernel"]
  norm = jnp.sqrt(jnp.sum(kernel ** 2, axis=(0, 1, 2, 3)))
  assert float(norm.min()) > 4.0
  applied = kernel * 4.0 / norm
  ref = jax.lax.conv_general_dilated(x, applied, (1, 1, 1), "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  np.testing.assert_allclose(conv.apply(big, x), ref + big["params"]["bias"], rtol=2e-4,
                             atol=2e-4)
  small = jax.tree.map(lambda a: a * 1e-3, v)  # Inside the bound: untouched.
  ref_small = jax.lax.conv_general_dilated(x, small["params"]["kernel"], (1, 1, 1), "SAME",
                                           dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  np.testing.assert_allclose(conv.apply(small, x), ref_small, rtol=1e-5, atol=1e-7)


def _scenes(n=6, seed=0):
  rng = np.random.default_rng(seed)
  codes = sim.kind_codes(("c100", "c60", "gamma"), n)
  return sim.sample_scenes(rng, codes, params=sim.SimParams(fog_density_per_um3=0.0))


@pytest.mark.parametrize("steps,mirror", [(4, False), (4, True), (8, False), (12, True)])
def test_exact_cycled_rotation_equals_the_simulated_rotated_event(steps, mirror):
  sc = _scenes()
  images = jnp.asarray(sim.expected_images(sc))
  truth = sim.expected_images(sim.rotate_scenes(sc, 22.5 * steps, mirror=mirror))
  b = images.shape[0]
  m = jnp.full((b,), mirror)
  rotated = newsdm_model.rotate_exact(images, jnp.full((b,), steps // 4), m)
  cycled = newsdm_model.cycle_polarisations(rotated, jnp.full((b,), steps), m)
  np.testing.assert_allclose(cycled, truth, atol=1e-5 * float(truth.max()))
  if steps % 8:  # Negative control: the source study's rotation without cycling.
    assert float(jnp.abs(rotated - truth).max()) > 0.1 * float(truth.max())


@pytest.mark.parametrize("steps,mirror", [(1, False), (3, True), (6, False)])
def test_interpolated_cycled_rotation_is_close_to_the_simulated_rotated_event(steps, mirror):
  sc = _scenes(seed=1)
  images = jnp.asarray(sim.expected_images(sc))
  truth = sim.expected_images(sim.rotate_scenes(sc, 22.5 * steps, mirror=mirror))
  b = images.shape[0]
  m = jnp.full((b,), mirror)
  rotated = newsdm_model.rotate_bilinear(images, jnp.full((b,), np.radians(22.5 * steps)), m)
  cycled = newsdm_model.cycle_polarisations(rotated, jnp.full((b,), steps), m)
  peak = float(truth.max())
  assert float(jnp.abs(cycled - truth).max()) < 0.03 * peak  # Bilinear interpolation only.
  assert float(jnp.abs(rotated - truth).max()) > 0.08 * peak  # Uncycled: wrong response.


def test_bilinear_quarter_turns_match_the_exact_permutations():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 40, 40, 8))
  turns = jnp.arange(4)
  mirror = jnp.array([False, True, False, True])
  np.testing.assert_allclose(newsdm_model.rotate_bilinear(x, turns * np.pi / 2, mirror),
                             newsdm_model.rotate_exact(x, turns, mirror), atol=1e-5)


@pytest.mark.parametrize("mode,exact", [("source", False), ("source", True), ("cycled", False),
                                        ("cycled", True)])
def test_augment_keeps_the_format(mode, exact):
  x = jax.random.uniform(jax.random.PRNGKey(0), (5, 40, 40, 8))
  x = jnp.concatenate([x, x[..., :1]], axis=-1)
  out = newsdm_model.augment(x, jax.random.PRNGKey(3), mode, exact)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out[..., 8], out[..., 0])  # Channel 9 = pol0 again.
  if exact:  # Pixel permutations: the same multiset of values per event.
    np.testing.assert_allclose(np.sort(np.asarray(out[..., :8]).reshape(5, -1)),
                               np.sort(np.asarray(x[..., :8]).reshape(5, -1)))
  assert newsdm_model.augment(x, jax.random.PRNGKey(3), "none") is x
  with pytest.raises(ValueError, match="known"):
    newsdm_model.augment(x, jax.random.PRNGKey(3), "spin")


def test_debiased_batch_norm_evaluates_with_the_batch_statistics_seen():
  """After one training step the moving statistics are that batch's (not 1 % of them plus
  99 % of the initial variance 1, as Keras / flax.linen.BatchNorm after one step); after
  many steps they are Keras' exponential average."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0.3, 0.1, (64, 5, 5, 3)), jnp.float32)  # Variance 0.01 ≪ 1.
  bn = newsdm_model.DebiasedBatchNorm(use_running_average=False, momentum=0.99)
  variables = bn.init(jax.random.PRNGKey(0), x)
  evaluate = newsdm_model.DebiasedBatchNorm(use_running_average=True, momentum=0.99)
  untrained = evaluate.apply(variables, x)
  np.testing.assert_allclose(np.asarray(untrained), np.asarray(x) / np.sqrt(1 + 1e-3),
                             rtol=1e-5)  # Mean 0, variance 1 before any step.
  y, new = bn.apply(variables, x, mutable=["batch_stats"])
  stats = new["batch_stats"]
  out = evaluate.apply({"params": variables["params"], "batch_stats": stats}, x)
  np.testing.assert_allclose(np.asarray(out), np.asarray(y), atol=1e-4)
  assert float(np.std(np.asarray(out))) > 0.9  # Not divided down by the initial variance.
  m, batches = 0.99, [jnp.asarray(rng.normal(i, 1 + i, (32, 3)), jnp.float32)
                      for i in range(400)]
  keras_mean, keras_var = np.zeros(3), np.ones(3)
  for b in batches:
    _, new = bn.apply({"params": variables["params"], "batch_stats": stats}, b,
                      mutable=["batch_stats"])
    stats = new["batch_stats"]
    keras_mean = m * keras_mean + (1 - m) * np.asarray(b).mean(0)
    keras_var = m * keras_var + (1 - m) * np.asarray(b).var(0)
  w = float(stats["weight"])
  np.testing.assert_allclose(w, 1 - m ** 401, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["mean"]) / w, keras_mean, rtol=2e-2)
  np.testing.assert_allclose(np.asarray(stats["var"]) / w, keras_var, rtol=2e-2)
