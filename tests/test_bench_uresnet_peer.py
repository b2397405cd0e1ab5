"""scripts/bench_uresnet.py's PyTorch peer computes recoil_jax's UResNet.

The torch tests are skipped where torch (the ``peers`` extra) is not installed. In-process,
no timing: parameter counts against recoil_jax's (Table 1 and the variants), and, with the
Flax weights loaded into the torch network, the same logits (eval and train mode) and loss
on a tiny configuration.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_module
from recoil_jax.studies.sbnd import model as uresnet

TINY = dict(initial_filters=2, depth=2, deepest_filters=8, deepest_blocks=1)
VARIANTS = [
    {},
    dict(connections="concat", upsampling="convolutional"),
    dict(cross_plane=False, residual=False, first_kernel=4, deepest_kernel=3),
]


@pytest.fixture(scope="module")
def bench():
  return load_module("scripts/bench_uresnet.py")


def test_peer_defaults_are_recoil_jax_defaults(bench):
  fields = {f.name: f.default for f in dataclasses.fields(uresnet.UResNet)}
  assert {k: fields[k] for k in bench.TORCH_PEER_DEFAULTS} == bench.TORCH_PEER_DEFAULTS
  # Everything else is no part of the architecture (small_map_convs, fused_batch_norm: the
  # same function computed differently).
  assert set(fields) - set(bench.TORCH_PEER_DEFAULTS) <= {
      "dtype", "bn_axis_name", "parent", "name", *bench.COMPUTATION_ONLY_FIELDS}


def test_malloc_settings_and_a_missing_allocator(bench, monkeypatch):
  assert bench._malloc_env("default") == {}  # pylint: disable=protected-access
  assert "GLIBC_TUNABLES" in bench._malloc_env("keep")  # pylint: disable=protected-access
  monkeypatch.setitem(bench.MALLOC_ENVS, "jemalloc", {"LD_PRELOAD": "libno_such_alloc.so.9"})
  with pytest.raises(SystemExit, match="libno_such_alloc.so.9 is not installed"):
    bench._malloc_env("jemalloc")  # pylint: disable=protected-access


def test_cosmictagger_parameter_count(bench):
  # Its A21 configuration: the count CosmicTagger's src/config/network.py documents.
  assert bench.cosmictagger_parameters(initial_filters=8, depth=6, connections="sum",
                                       blocks_final=0, batch_norm=True, residual=False) == 8_510_547
  # Table 1's configuration is recoil_jax's default UResNet.
  assert bench.cosmictagger_parameters(initial_filters=8, growth="multiplicative", depth=6,
                                       connections="sum", blocks_final=0, batch_norm=True,
                                       first_kernel=7) == 23_839_923


def _jax_parameters(overrides):
  net = uresnet.UResNet(**overrides)
  side = 2 ** net.depth
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 3, side, side)),
                                           train=False))
  return uresnet.parameter_count(shapes)


@pytest.mark.parametrize("overrides", [{}] + [dict(TINY, **v) for v in VARIANTS])
def test_peer_parameter_count(bench, overrides):
  pytest.importorskip("torch")
  net = bench.torch_uresnet(**overrides)
  assert sum(p.numel() for p in net.parameters()) == _jax_parameters(overrides)
  if not overrides:
    assert _jax_parameters({}) == 23_839_923


def _load_flax(net, variables):
  """Flax variables (per-plane BN statistics equal across planes) → the torch peer."""
  import torch  # pylint: disable=g-import-not-at-top
  state = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
    keys = [k.key for k in path]
    value = np.asarray(leaf)
    if keys[-1] == "kernel":  # [kh, kw, in, out]
      if keys[-2] == "upconv":  # ConvTranspose2d [in, out, kh, kw]; lax flips the kernel
        value = value.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1]
      else:  # Conv2d [out, in, kh, kw]
        value = value.transpose(3, 2, 0, 1)
    name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[keys[-1]]
    state[".".join(keys[:-1] + [name])] = torch.from_numpy(np.array(value))
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]):
    keys = [k.key for k in path]
    value = np.asarray(leaf)
    value = value[0] if value.ndim == 2 else value  # the per-plane copies are equal here
    name = {"mean": "running_mean", "var": "running_var"}[keys[-1]]
    state[".".join(keys[:-1] + [name])] = torch.from_numpy(np.array(value))
  missing, unexpected = net.load_state_dict(state, strict=False)
  assert not unexpected, unexpected
  assert all(k.endswith("num_batches_tracked") for k in missing), missing


@pytest.mark.parametrize("variant", VARIANTS)
def test_peer_computes_recoil_jax_network(bench, variant):
  torch = pytest.importorskip("torch")
  overrides = dict(TINY, **variant)
  model = uresnet.UResNet(**overrides)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(1, 3, 8, 16)).astype(np.float32)
  labels = rng.integers(0, 3, size=images.shape).astype(np.int32)
  variables = model.init(jax.random.key(0), jnp.asarray(images), train=False)
  # Random values everywhere (zero biases and unit BN would hide a wrong mapping); one set
  # of BN statistics repeated over the planes, as the torch module has one.
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.3, x.dtype),
                        variables["params"])

  def stats(path, x):
    one = rng.normal(size=x.shape[-1:]) * 0.1
    one = np.exp(one) if path[-1].key == "var" else one
    return jnp.asarray(np.broadcast_to(one, x.shape), x.dtype)

  variables = {"params": params,
               "batch_stats": jax.tree_util.tree_map_with_path(stats, variables["batch_stats"])}
  net = bench.torch_uresnet(**overrides)
  _load_flax(net, variables)
  x = torch.from_numpy(images)

  want = np.asarray(model.apply(variables, jnp.asarray(images), train=False))
  with torch.no_grad():
    got = net.eval()(x).permute(0, 1, 3, 4, 2).numpy()  # [B, P, C, H, W] → [B, P, H, W, C]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  want_train, _ = model.apply(variables, jnp.asarray(images), train=True,
                              mutable=["batch_stats"])
  net.train()
  logits = net(x)
  np.testing.assert_allclose(logits.detach().permute(0, 1, 3, 4, 2).numpy(),
                             np.asarray(want_train), rtol=1e-4, atol=1e-4)

  # The loss mirrors the jax side's, on the same logits.
  # pylint: disable=protected-access
  y = jnp.asarray(labels)
  want_loss = (bench._weighted_ce_sum(jnp.asarray(want_train), y)
               / bench._pixel_weights(y).sum((0, 2, 3))).sum()
  loss = bench._torch_weighted_loss(logits, torch.from_numpy(labels).long(),
                                    torch.tensor(bench.CLASS_WEIGHTS))
  # pylint: enable=protected-access
  np.testing.assert_allclose(float(loss.detach()), float(want_loss), rtol=1e-5)
  loss.backward()  # the train step's backward pass runs
  assert all(p.grad is not None for p in net.parameters())
