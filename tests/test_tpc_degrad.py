"""Tests of the readers of DEGRAD-style electron lists (ROOT, text, npz)."""

import awkward as ak
import numpy as np
import pytest
import uproot

from recoil_jax.studies.tpc import degrad as dr
from recoil_jax.studies.tpc import preprocess as tpc_preprocess


def make_events(seed=0, n_events=5):
  rng = np.random.default_rng(seed)
  return [np.cumsum(rng.normal(0, 0.05, (int(rng.integers(3, 40)), 3)), 0)
          for _ in range(n_events)]  # cm


def write_root(path, events_cm, tree="degrad", names=("x", "y", "z"), extra=None):
  """A TTree with one entry per event and jagged x, y, z branches, as the paper's authors'
  (arXiv 2403.15949) store DEGRAD output."""
  cols = {n: ak.Array([e[:, i].tolist() for e in events_cm]) for i, n in enumerate(names)}
  cols.update(extra or {})
  types = {k: ("var * float64" if isinstance(v, ak.Array) and v.ndim == 2 else v.dtype)
           for k, v in cols.items()}
  with uproot.recreate(path) as f:
    t = f.mktree(tree, types)
    t.extend(cols)


def assert_same(tracks, expected, scale=1.0):
  assert len(tracks) == len(expected)
  for a, b in zip(tracks, expected):
    assert a.dtype == np.float64 and a.shape == b.shape
    np.testing.assert_allclose(a, b * scale, rtol=1e-12, atol=1e-12)


def test_root_roundtrip_in_cm(tmp_path):
  events = make_events()
  path = tmp_path / "he_co2_40keV_0.root"
  write_root(path, events)
  assert_same(dr.read_degrad_root(path), events, 10.0)  # cm -> mm, tree auto-detected
  assert_same(dr.read_degrad_root(path, tree="degrad", unit="mm"), events)
  assert_same(dr.read_electron_file(path), events, 10.0)
  assert len(dr.read_degrad_root(path, max_events=2)) == 2


def test_root_rntuple(tmp_path):
  # uproot's dict assignment writes an RNTuple (ROOT 6.34+ files); read it the same way.
  events = make_events(7)
  path = tmp_path / "rntuple.root"
  with uproot.recreate(path) as f:
    f["events"] = {n: ak.Array([e[:, i].tolist() for e in events]) for i, n in enumerate("xyz")}
  assert_same(dr.read_degrad_root(path), events, 10.0)


def test_root_configurable_tree_and_branches(tmp_path):
  events = make_events(1)
  path = tmp_path / "custom.root"
  write_root(path, events, tree="electrons", names=("ex", "ey", "ez"))
  with uproot.update(path) as f:  # a second tree: auto-detection must refuse
    f.mktree("other", {"a": np.float64}).extend({"a": np.zeros(2)})
  with pytest.raises(dr.ElectronFileError, match=r"custom\.root.*exactly one tree"):
    dr.read_degrad_root(path)
  got = dr.read_degrad_root(path, tree="electrons", branches=("ex", "ey", "ez"), unit="m")
  assert_same(got, events, 1000.0)


def test_root_errors_name_file_event_and_problem(tmp_path):
  events = make_events(2)
  path = tmp_path / "bad.root"
  write_root(path, events)
  with pytest.raises(dr.ElectronFileError, match=r"bad\.root: no tree 'nope'"):
    dr.read_degrad_root(path, tree="nope")
  with pytest.raises(dr.ElectronFileError, match=r"bad\.root: .*no branch \['w'\]"):
    dr.read_degrad_root(path, branches=("x", "y", "w"))

  mismatch = tmp_path / "mismatch.root"
  cols = {n: ak.Array([e[:, i].tolist() for e in events]) for i, n in enumerate("xyz")}
  cols["z"] = ak.Array([e[:, 2].tolist() if i != 3 else e[:-1, 2].tolist()
                        for i, e in enumerate(events)])
  with uproot.recreate(mismatch) as f:
    f.mktree("t", {k: "var * float64" for k in cols}).extend(cols)
  with pytest.raises(dr.ElectronFileError,
                     match=r"mismatch\.root, event 3: length mismatch.*'z'"):
    dr.read_degrad_root(mismatch)

  nan_events = [e.copy() for e in events]
  nan_events[2][1, 0] = np.nan
  nan_path = tmp_path / "nan.root"
  write_root(nan_path, nan_events)
  with pytest.raises(dr.ElectronFileError, match=r"nan\.root, event 2: .*NaN/inf.*electron 1"):
    dr.read_degrad_root(nan_path)

  empty_events = list(events)
  empty_events[1] = np.zeros((0, 3))
  empty_path = tmp_path / "empty.root"
  write_root(empty_path, empty_events)
  with pytest.raises(dr.ElectronFileError, match=r"empty\.root, event 1: empty event"):
    dr.read_degrad_root(empty_path)

  flat_path = tmp_path / "flat.root"
  write_root(flat_path, events, extra={"energy": np.arange(len(events), dtype=np.float64)})
  with pytest.raises(dr.ElectronFileError, match="'energy' is not a per-event list"):
    dr.read_degrad_root(flat_path, branches=("x", "y", "energy"))

  not_root = tmp_path / "junk.root"
  not_root.write_text("not a root file")
  with pytest.raises(dr.ElectronFileError, match=r"junk\.root: cannot open as a ROOT file"):
    dr.read_degrad_root(not_root)
  with pytest.raises(FileNotFoundError, match="missing.root"):
    dr.read_degrad_root(tmp_path / "missing.root")


def write_root_in_baskets(path, events_cm, per_basket):
  """Like write_root, one ``extend`` (one basket per branch) per ``per_basket`` events."""
  with uproot.recreate(path) as f:
    t = f.mktree("degrad", {n: "var * float64" for n in "xyz"})
    for lo in range(0, len(events_cm), per_basket):
      t.extend({n: ak.Array([e[:, i].tolist() for e in events_cm[lo:lo + per_basket]])
                for i, n in enumerate("xyz")})


def test_corrupted_root_files_name_the_file_and_entries(tmp_path):
  events = make_events(8, n_events=30)
  good = tmp_path / "good.root"
  write_root_in_baskets(good, events, per_basket=10)
  assert_same(dr.read_degrad_root(good), events, 10.0)
  data = good.read_bytes()

  # Garbage in the middle of branch y's second basket (events 10..19): a zlib error.
  branch = uproot.open(good)["degrad"]["y"]
  start, size = int(branch.member("fBasketSeek")[1]), int(branch.member("fBasketBytes")[1])
  damaged = bytearray(data)
  damaged[start + size // 2:start + size // 2 + 16] = b"\xff" * 16
  path = tmp_path / "garbled.root"
  path.write_bytes(bytes(damaged))
  with pytest.raises(dr.ElectronFileError,
                     match=r"garbled\.root: cannot read branch 'y' of tree 'degrad' at entries "
                     r"\(events\) \[10, 20\): the file is corrupted or truncated") as info:
    dr.read_degrad_root(path)
  assert info.value.__cause__ is not None  # the original (zlib) error

  # Truncated anywhere: an ElectronFileError naming the file, never a bare uproot error.
  for fraction in (0.05, 0.3, 0.6, 0.9, 0.99):
    path = tmp_path / f"truncated_{int(fraction * 100)}.root"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(dr.ElectronFileError, match=rf"{path.name}: ") as info:
      dr.read_electron_file(path)
    assert isinstance(info.value, ValueError) and info.value.__cause__ is not None
    assert "corrupted or truncated" in str(info.value) or "cannot open" in str(info.value)
  path = tmp_path / "truncated_90.root"  # The last basket of y is cut: events 20..29.
  with pytest.raises(dr.ElectronFileError, match=r"entries \(events\) \[20, 30\)"):
    dr.read_degrad_root(path)

  # Random bytes with a .root suffix.
  path = tmp_path / "noise.root"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(dr.ElectronFileError, match=r"noise\.root: cannot open as a ROOT file"):
    dr.read_electron_file(path)


def test_corrupted_npz_and_text_files_name_the_file(tmp_path):
  events = make_events(9)
  good = tmp_path / "good.npz"
  dr.write_electron_npz(good, events)
  data = good.read_bytes()
  cases = {"truncated.npz": data[:len(data) // 2], "noise.npz": bytes(range(256)) * 8}
  damaged = bytearray(data)  # np.savez stores members uncompressed, with a CRC-32.
  offset = data.index(b"y.npy")
  damaged[offset + 200:offset + 232] = b"\x00" * 32
  cases["crc.npz"] = bytes(damaged)
  compressed = tmp_path / "compressed.npz"
  flat = np.concatenate(events)
  np.savez_compressed(compressed, x=flat[:, 0], y=flat[:, 1], z=flat[:, 2],
                      counts=[len(e) for e in events])
  damaged = bytearray(compressed.read_bytes())
  offset = damaged.index(b"z.npy")
  damaged[offset + 60:offset + 92] = b"\xff" * 32
  cases["deflate.npz"] = bytes(damaged)
  for name, content in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(dr.ElectronFileError, match=rf"{name}: cannot read") as info:
      dr.read_electron_file(path)
    assert info.value.__cause__ is not None, name
  with pytest.raises(dr.ElectronFileError, match=r"crc\.npz: cannot read array 'y': the file is "
                     r"corrupted or truncated \(BadZipFile: Bad CRC-32"):
    dr.read_electron_npz(tmp_path / "crc.npz")
  single = tmp_path / "single.npz"
  with open(single, "wb") as f:
    np.save(f, flat)
  with pytest.raises(dr.ElectronFileError, match=r"single\.npz: a single \.npy array"):
    dr.read_electron_npz(single)

  # Text: binary garbage, a NUL byte, a non-numeric field.
  binary = tmp_path / "binary.txt"
  binary.write_bytes(b"# event 0\n1 2 3\n" + data[:64])
  with pytest.raises(dr.ElectronFileError, match=r"binary\.txt: line 3: byte \d+ .* is not "
                     r"UTF-8 text") as info:
    dr.read_electron_text(binary)
  assert isinstance(info.value.__cause__, UnicodeDecodeError)
  nul = tmp_path / "nul.dat"
  nul.write_bytes(b"1 2 3\n\n4 5 \x006\n")
  with pytest.raises(dr.ElectronFileError, match=r"nul\.dat, event 1: line 3: non-numeric"):
    dr.read_electron_file(nul)
  field = tmp_path / "field.csv"
  field.write_text("# event 0\n1,2,3\n# event 1\n1,2,3\n4,five,6\n")
  with pytest.raises(dr.ElectronFileError,
                     match=r"field\.csv, event 1: line 5: non-numeric value in '4,five,6'"):
    dr.read_electron_file(field)


def test_text_formats(tmp_path):
  events = make_events(3)
  headed = tmp_path / "ev.txt"
  dr.write_electron_text(headed, events)
  assert_same(dr.read_electron_text(headed), events)
  assert_same(dr.read_electron_file(headed, unit="cm"), events, 10.0)

  blank = tmp_path / "blank.dat"
  blank.write_text("# a comment\n1 2 3\n4,5,6\n\n\n7 8 9\n# another comment\n\n  10\t11 12 \n")
  got = dr.read_electron_file(blank)
  assert [g.tolist() for g in got] == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9]], [[10, 11, 12]]]


def test_text_errors(tmp_path):
  cases = {
      "nonnum.txt": ("# event 0\n1 2 3\n# event 7\n1 2 x\n",
                     r"nonnum\.txt, event 7: line 4: non-numeric"),
      "cols.txt": ("1 2 3\n\n1 2\n", r"cols\.txt, event 1: line 3: expected 3 numbers"),
      "empty_event.txt": ("# event 0\n1 2 3\n# event 1\n\n# event 2\n1 1 1\n",
                          r"empty_event\.txt, event 1: empty event"),
      "inf.txt": ("# event a\n1 2 3\n# event b\n1 inf 3\n", r"inf\.txt, event b: .*NaN/inf"),
      "orphan.txt": ("1 2 3\n# event 0\n1 2 3\n", r"orphan\.txt: line 1: electron line before"),
      "nothing.txt": ("# just a comment\n\n", r"nothing\.txt: no events"),
  }
  for name, (text, pattern) in cases.items():
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(dr.ElectronFileError, match=pattern):
      dr.read_electron_text(path)


def test_npz_counts_and_offsets(tmp_path):
  events = make_events(4)
  path = tmp_path / "ev.npz"
  dr.write_electron_npz(path, events)
  assert_same(dr.read_electron_npz(path), events)
  flat = np.concatenate(events)
  counts = np.array([len(e) for e in events])
  off = tmp_path / "off.npz"
  np.savez(off, x=flat[:, 0], y=flat[:, 1], z=flat[:, 2],
           offsets=np.concatenate([[0], np.cumsum(counts)]))
  assert_same(dr.read_electron_file(off, unit="um"), events, 1e-3)


def test_npz_errors(tmp_path):
  flat = np.concatenate(make_events(5))
  n = len(flat)

  def save(name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path

  cases = [
      (save("nox.npz", y=flat[:, 1], z=flat[:, 2], counts=[n]), r"nox\.npz: missing.*\['x'\]"),
      (save("both.npz", x=flat[:, 0], y=flat[:, 1], z=flat[:, 2], counts=[n], offsets=[0, n]),
       "exactly one of"),
      (save("len.npz", x=flat[:, 0], y=flat[:, 1], z=flat[1:, 2], counts=[n]),
       r"len\.npz: length mismatch between x, y, z"),
      (save("sum.npz", x=flat[:, 0], y=flat[:, 1], z=flat[:, 2], counts=[n - 1]),
       "accounts for"),
      (save("zero.npz", x=flat[:, 0], y=flat[:, 1], z=flat[:, 2], counts=[n, 0]),
       r"zero\.npz, event 1: empty event"),
      (save("dec.npz", x=flat[:, 0], y=flat[:, 1], z=flat[:, 2], offsets=[0, 5, 3, n]),
       r"dec\.npz, event 1: 'offsets' decreases"),
  ]
  nan = flat.copy()
  nan[7, 2] = np.inf
  cases.append((save("nan.npz", x=nan[:, 0], y=nan[:, 1], z=nan[:, 2], counts=[5, 5, n - 10]),
                r"nan\.npz, event 1: .*NaN/inf.*electron 2"))
  for path, pattern in cases:
    with pytest.raises(dr.ElectronFileError, match=pattern):
      dr.read_electron_npz(path)


def test_dispatch_and_units(tmp_path):
  with pytest.raises(dr.ElectronFileError, match=r"\.h5.*unknown suffix"):
    dr.read_electron_file(tmp_path / "x.h5")
  path = tmp_path / "a.npz"
  dr.write_electron_npz(path, make_events())
  with pytest.raises(ValueError, match="unknown length unit 'inch'"):
    dr.read_electron_file(path, unit="inch")


def test_stack_tracks_feeds_preprocessing(tmp_path):
  events_cm = make_events(6, n_events=7)
  path = tmp_path / "he_co2_50keV_1.root"
  write_root(path, events_cm)
  tracks = dr.read_electron_file(path)
  positions, num = dr.stack_tracks(tracks)
  assert positions.shape == (7, max(len(e) for e in events_cm), 3)
  assert positions.dtype == np.float32 and num.dtype == np.int32
  np.testing.assert_array_equal(num, [len(e) for e in events_cm])
  for i, e in enumerate(events_cm):
    np.testing.assert_allclose(positions[i, :num[i]], e * 10.0, rtol=1e-6)
    assert (positions[i, num[i]:] == 0).all()
  out, counts = tpc_preprocess.preprocess_tracks(positions, num, 50.0, np.random.default_rng(0),
                                                 200.0, max_voxels=256)
  assert counts.kept == 7
  np.testing.assert_array_equal(out.charges.sum(1), num)
  with pytest.raises(ValueError, match="track 1 has shape"):
    dr.stack_tracks([np.zeros((2, 3)), np.zeros((2, 2))])
