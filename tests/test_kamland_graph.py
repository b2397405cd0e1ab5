"""The jraph graph network on the PMT graph: the graph, and invariance to PMT relabelling."""

import jax
import numpy as np

from recoil_jax.studies.kamland import model as kamland_model
from recoil_jax.studies.kamland import sim


def test_pmt_graph_joins_each_pmt_to_its_nearest_neighbours():
  pos = sim.pmt_table()[0]
  senders, receivers, angle = kamland_model.pmt_graph(pos, 6)
  assert senders.shape == receivers.shape == angle.shape == (6 * len(pos),)
  np.testing.assert_array_equal(np.bincount(receivers), 6)
  assert not np.any(senders == receivers)
  # Fibonacci lattice of 1879 points: neighbour spacing ≈ √(4π/1879) ≈ 4.7°.
  assert 2.5 < np.degrees(np.median(angle)) < 7.0


def test_output_is_invariant_to_relabelling_the_pmts():
  pos = sim.pmt_table()[0].astype(np.float32)
  rng = np.random.default_rng(0)
  nodes = rng.poisson(0.3, (2, len(pos), 2)).astype(np.float32)
  perm = rng.permutation(len(pos))
  net = kamland_model.GraphClassifier(pmt_positions=pos, k=6, features=(4, 8), hidden=(8,))
  v = net.init(jax.random.PRNGKey(0), {"nodes": nodes}, train=False)
  out = net.apply(v, {"nodes": nodes}, train=False)["logit"]
  relabelled = kamland_model.GraphClassifier(pmt_positions=pos[perm], k=6, features=(4, 8),
                                             hidden=(8,))
  out_perm = relabelled.apply(v, {"nodes": nodes[:, perm]}, train=False)["logit"]
  np.testing.assert_allclose(out_perm, out, rtol=1e-4, atol=1e-5)
  # Control: moving the hits to other PMTs (table unchanged) does change the output.
  moved = net.apply(v, {"nodes": nodes[:, perm]}, train=False)["logit"]
  assert np.max(np.abs(moved - out)) > 1e-3 * (1 + np.max(np.abs(out)))
