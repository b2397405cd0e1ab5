"""The cube-symmetry augmentation of the TPC model is exact and equivariant."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax.studies.tpc import model as tpc_model


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
    # Oracle: x' = g x about the centre; for each output axis i, x'_i = s_i x_{p(i)}.
    perm = np.argmax(np.abs(m), axis=1)
    signs = m[np.arange(3), perm]
    expected = np.transpose(dense, perm)
    for axis, s in enumerate(signs):
      if s < 0:
        expected = np.flip(expected, axis)
    np.testing.assert_array_equal(out, expected)


def test_symmetry_preserves_the_mean_centred_point_cloud_geometry():
  """Voxel centres transform as physical points rotated about the grid centre (0 mm)."""
  size, pitch = 120, 0.5
  rng = np.random.default_rng(1)
  coords = rng.integers(0, size, (1, 50, 3))
  m = np.asarray(tpc_model.cube_symmetries())[37]
  new = np.asarray(tpc_model.apply_grid_symmetry(jnp.asarray(coords), jnp.asarray(m[None]), size))
  centre_mm = lambda c: (c + 0.5) * pitch - size * pitch / 2
  np.testing.assert_allclose(centre_mm(new[0]), centre_mm(coords[0]) @ m.T, atol=1e-12)


def _tiny_batch(seed=0, batch=2, voxels=24):
  rng = np.random.default_rng(seed)
  start = rng.integers(40, 70, (batch, 1, 3))
  steps = rng.integers(-1, 2, (batch, voxels, 3)).cumsum(axis=1)
  coords = np.clip(start + steps, 0, 119).astype(np.int32)
  return {"coords": jnp.asarray(coords),
          "charges": jnp.asarray(rng.integers(1, 20, (batch, voxels)).astype(np.float32)),
          "num_voxels": jnp.asarray([voxels, voxels - 5], jnp.int32)}


def test_augmented_model_is_the_plain_model_on_the_transformed_event_rotated_back():
  batch = _tiny_batch()
  caps = (512, 128, 512, 512, 128)
  plain = tpc_model.TpcDirectionNet(head="kent", capacity_per_event=caps)
  aug = tpc_model.TpcDirectionNet(head="kent", capacity_per_event=caps, symmetry_augment=True)
  variables = plain.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(3)
  out = aug.apply(variables, batch, train=True, rngs={"dropout": rng})
  pick = out["symmetry"]
  assert pick.shape == (2,) and int(pick.min()) >= 0 and int(pick.max()) < 48
  assert np.any(np.asarray(pick) != 0), "key draws the identity for both events; change it"
  sym = tpc_model.cube_symmetries()[pick]
  moved = dict(batch, coords=tpc_model.apply_grid_symmetry(batch["coords"], sym, 120))
  ref = plain.apply(variables, moved, train=False)
  want_dir = jnp.einsum("bji,bj->bi", sym, ref["pred_direction"])
  np.testing.assert_allclose(out["pred_direction"], want_dir, atol=1e-6)
  np.testing.assert_allclose(out["frame"][:, 0], out["pred_direction"], atol=1e-6)
  np.testing.assert_allclose(out["kappa"], ref["kappa"], rtol=1e-6)
  # Off at evaluation: identical to the plain model.
  ev = aug.apply(variables, batch, train=False)
  np.testing.assert_allclose(ev["pred_direction"], plain.apply(variables, batch)["pred_direction"])
