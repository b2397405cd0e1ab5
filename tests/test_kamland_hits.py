"""Hit-list and PMT-table readers: round trip, and errors that name the file and event."""

import numpy as np
import pytest

from recoil_jax.studies.kamland import hits
from recoil_jax.studies.kamland import sim


def test_round_trip(tmp_path):
  ev = sim.simulate(0, 3, "0vbb")
  path = hits.write_hits(str(tmp_path / "a.npz"), ev)
  back = hits.read_hits(path, sim.NUM_PMTS)
  np.testing.assert_array_equal(back.offsets, ev.offsets)
  np.testing.assert_array_equal(back.pmt, ev.pmt)
  np.testing.assert_array_equal(back.time, ev.time)
  np.testing.assert_array_equal(back.label, ev.label)


def test_bad_hit_names_file_and_event(tmp_path):
  ev = sim.simulate(0, 3, "0vbb")
  ev.pmt[ev.offsets[2] + 1] = 5000
  path = hits.write_hits(str(tmp_path / "bad.npz"), ev)
  with pytest.raises(ValueError, match=r"bad\.npz: event 2, hit 1: PMT index"):
    hits.read_hits(path, sim.NUM_PMTS)
  np.savez(tmp_path / "missing.npz", pmt=np.zeros(3))
  with pytest.raises(ValueError, match=r"missing\.npz: missing array"):
    hits.read_hits(str(tmp_path / "missing.npz"), sim.NUM_PMTS)


def test_pmt_tables_npz_and_csv(tmp_path):
  pos, kind = sim.pmt_table()
  np.savez(tmp_path / "t.npz", positions=pos, type=kind)
  p2, k2 = hits.read_pmt_table(str(tmp_path / "t.npz"))
  np.testing.assert_array_equal(p2, pos)
  csv = tmp_path / "t.csv"
  rows = "\n".join(f"{i},{x},{y},{z},{k}" for i, ((x, y, z), k) in
                   reversed(list(enumerate(zip(pos[:5], kind[:5])))))
  csv.write_text("id,x,y,z,type\n" + rows + "\n")
  p3, _ = hits.read_pmt_table(str(csv))
  np.testing.assert_allclose(p3, pos[:5])
  (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
  with pytest.raises(ValueError, match=r"bad\.csv: PMT table CSV lacks"):
    hits.read_pmt_table(str(tmp_path / "bad.csv"))
