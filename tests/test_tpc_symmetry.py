"""The cube-symmetry augmentation of the TPC model is exact and equivariant.

Each equivariance check comes with a negative control that must fail it: a layer that is not
equivariant (an asymmetric kernel, a position-dependent bias) or the augmentation without
mapping the output back with gᵀ, so that a check which cannot fail is noticed.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.ops import sparse
from recoil_jax.studies.tpc import model as tpc_model


def _moved_grid(x, m, first=0):
  """Oracle: the grid axes first..first+2 of ``x`` moved by g about their centre.

  For each output axis i, x'_i = s_i x_{p(i)}: transpose the axes by p, then flip where s < 0.
  """
  m = np.asarray(m)
  perm = np.argmax(np.abs(m), axis=1)
  signs = m[np.arange(3), perm]
  axes = list(range(x.ndim))
  axes[first:first + 3] = [first + int(p) for p in perm]
  out = np.transpose(x, axes)
  for axis, s in enumerate(signs):
    if s < 0:
      out = np.flip(out, first + axis)
  return out


def test_cube_symmetries_are_the_full_signed_permutation_group():
  mats = np.asarray(tpc_model.cube_symmetries(), np.float64)
  assert mats.shape == (48, 3, 3)
  for m in mats:
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=0)
  assert len({m.tobytes() for m in mats}) == 48
  keys = {m.astype(int).tobytes() for m in mats}
  for a, b in itertools.product(mats[::5], mats[::7]):  # closed under composition
    assert (a @ b).astype(int).tobytes() in keys


def test_grid_symmetry_maps_voxels_like_permuting_and_flipping_the_dense_grid():
  """g acting on indices about the centre == transposing/flipping the dense occupancy grid."""
  rng = np.random.default_rng(0)
  size = 8
  dense = (rng.random((size, size, size)) < 0.1) * rng.integers(1, 9, (size, size, size))
  coords = np.argwhere(dense > 0)
  mats = np.asarray(tpc_model.cube_symmetries())
  for m in mats[rng.choice(48, 10, replace=False)]:
    new = np.asarray(tpc_model.apply_grid_symmetry(
        jnp.asarray(coords[None]), jnp.asarray(m[None]), size))[0]
    assert new.min() >= 0 and new.max() < size
    out = np.zeros_like(dense)
    out[tuple(new.T)] = dense[tuple(coords.T)]
    np.testing.assert_array_equal(out, _moved_grid(dense, m))


def test_symmetry_preserves_the_mean_centred_point_cloud_geometry():
  """Voxel centres transform as physical points rotated about the grid centre (0 mm)."""
  size, pitch = 120, 0.5
  rng = np.random.default_rng(1)
  coords = rng.integers(0, size, (1, 50, 3))
  m = np.asarray(tpc_model.cube_symmetries())[37]
  new = np.asarray(tpc_model.apply_grid_symmetry(jnp.asarray(coords), jnp.asarray(m[None]), size))
  centre_mm = lambda c: (c + 0.5) * pitch - size * pitch / 2
  np.testing.assert_allclose(centre_mm(new[0]), centre_mm(coords[0]) @ m.T, atol=1e-12)


def _walks(rng, batch, voxels, size):
  """Random-walk tracks in a ``size``³ grid: coords [B, V, 3], features [B, V, 2], num [B]."""
  start = rng.integers(size // 3, 2 * size // 3, (batch, 1, 3))
  steps = rng.integers(-1, 2, (batch, voxels, 3)).cumsum(axis=1)
  coords = np.clip(start + steps, 0, size - 1).astype(np.int32)
  feats = rng.normal(size=(batch, voxels, 2)).astype(np.float32)
  return jnp.asarray(coords), jnp.asarray(feats), jnp.asarray([voxels, voxels - 3], jnp.int32)


def _grid_equivariance_error(layer, coords, feats, num, m, size):
  """max |layer(g·x) − g·layer(x)| over the dense output grid; 0 if ``layer`` commutes with g."""
  shape = (size,) * 3
  out = sparse.to_dense(layer(sparse.from_padded_voxels(coords, feats, num, shape)))
  moved = tpc_model.apply_grid_symmetry(coords, jnp.broadcast_to(m, (coords.shape[0], 3, 3)),
                                        size)
  out_g = sparse.to_dense(layer(sparse.from_padded_voxels(moved, feats, num, shape)))
  return float(np.max(np.abs(_moved_grid(np.asarray(out), m, first=1) - np.asarray(out_g))))


def test_grid_symmetry_check_passes_equivariant_layers_and_catches_the_others():
  """A SubM conv with a cube-symmetric kernel commutes with every g; the controls do not.

  Controls (must fail the same check for every g ≠ 1): the same conv with the raw, asymmetric
  kernel, and the symmetric conv plus a bias that depends on the voxel position.
  """
  size = 16
  rng = np.random.default_rng(2)
  coords, feats, num = _walks(rng, 2, 40, size)
  mats = np.asarray(tpc_model.cube_symmetries())
  kernel = rng.normal(size=(3, 3, 3, 2, 3)).astype(np.float32)
  symmetric = np.mean([_moved_grid(kernel, m) for m in mats], axis=0)
  bias = jnp.asarray([0.3, -0.2, 0.1], jnp.float32)
  position = jnp.asarray([0.11, 0.07, 0.05], jnp.float32)  # generic: gᵀ·v = v only for g = 1

  def conv(w):
    return lambda st: sparse.subm_conv(st, jnp.asarray(w), bias)

  def position_bias(st):
    st = sparse.subm_conv(st, jnp.asarray(symmetric), bias)
    shift = st.coords[:, 1:].astype(jnp.float32) @ position[:, None]
    return st.replace(features=st.features + shift)

  layers = {"symmetric": conv(symmetric), "asymmetric": conv(kernel),
            "position_bias": position_bias}
  errors = {name: [] for name in layers}
  for m in mats:
    for name, layer in layers.items():
      errors[name].append(_grid_equivariance_error(layer, coords, feats, num, m, size))
  errors = {name: np.asarray(e) for name, e in errors.items()}
  identity = np.all(mats == np.eye(3), axis=(1, 2))
  assert identity.sum() == 1
  assert errors["symmetric"].max() < 1e-5, errors["symmetric"]
  for name in ("asymmetric", "position_bias"):
    assert errors[name][identity].max() < 1e-5, name  # The check itself is consistent ...
    assert errors[name][~identity].min() > 1e-2, (name, errors[name])  # ... and has power.


def _tiny_batch(seed=0, batch=2, voxels=24):
  rng = np.random.default_rng(seed)
  start = rng.integers(40, 70, (batch, 1, 3))
  steps = rng.integers(-1, 2, (batch, voxels, 3)).cumsum(axis=1)
  coords = np.clip(start + steps, 0, 119).astype(np.int32)
  return {"coords": jnp.asarray(coords),
          "charges": jnp.asarray(rng.integers(1, 20, (batch, voxels)).astype(np.float32)),
          "num_voxels": jnp.asarray([voxels, voxels - 5], jnp.int32)}


def _direction_error(pred, ref, sym, map_back=True):
  """max |pred − gᵀ·ref| (or |pred − ref| with ``map_back=False``) over events and components."""
  want = jnp.einsum("bji,bj->bi", sym, ref) if map_back else ref
  return float(np.max(np.abs(np.asarray(pred) - np.asarray(want))))


def test_augmented_model_is_the_plain_model_on_the_transformed_event_rotated_back():
  batch = _tiny_batch()
  caps = (512, 128, 512, 512, 128)
  plain = tpc_model.TpcDirectionNet(head="kent", capacity_per_event=caps)
  aug = tpc_model.TpcDirectionNet(head="kent", capacity_per_event=caps, symmetry_augment=True)
  variables = jax.jit(plain.init)(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(3)
  # Jitted: op by op the sparse layers take several times longer than their compilation.
  out = jax.jit(lambda v, b, r: aug.apply(v, b, train=True, rngs={"dropout": r}))(
      variables, batch, rng)
  plain_eval = jax.jit(lambda v, b: plain.apply(v, b, train=False))
  pick = out["symmetry"]
  assert pick.shape == (2,) and int(pick.min()) >= 0 and int(pick.max()) < 48
  assert np.any(np.asarray(pick) != 0), "key draws the identity for both events; change it"
  sym = tpc_model.cube_symmetries()[pick]
  moved = dict(batch, coords=tpc_model.apply_grid_symmetry(batch["coords"], sym, 120))
  ref = plain_eval(variables, moved)
  assert _direction_error(out["pred_direction"], ref["pred_direction"], sym) < 1e-6
  # Negative control: the same comparison without mapping back with gᵀ detects the difference.
  assert _direction_error(out["pred_direction"], ref["pred_direction"], sym,
                          map_back=False) > 0.1
  np.testing.assert_allclose(out["frame"][:, 0], out["pred_direction"], atol=1e-6)
  np.testing.assert_allclose(out["kappa"], ref["kappa"], rtol=1e-6)
  # Off at evaluation: identical to the plain model.
  ev = jax.jit(lambda v, b: aug.apply(v, b, train=False))(variables, batch)
  np.testing.assert_allclose(ev["pred_direction"], plain_eval(variables, batch)["pred_direction"])
