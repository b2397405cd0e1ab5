"""Tests of recoil_jax.io: JSON-safe values and atomic text / JSON / npz / figure writes."""

import json
import os
import threading

from matplotlib.figure import Figure
import numpy as np
import pytest

from recoil_jax import io


def _files(folder):
  """Every file under ``folder`` (relative names, sorted): temporary files included."""
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


def test_simulated_label():
  assert io.SIMULATED == "simulated"


def test_json_safe_converts_numpy_and_non_finite_values():
  value = {1: np.float32(0.5), "a": (np.int64(3), np.bool_(True), float("nan")),
           "arr": np.array([[1.0, np.inf], [-np.inf, 2.0]]), "nested": [{"x": np.float64(-0.0)}],
           "s": "text", "none": None}
  out = io.json_safe(value)
  assert out == {"1": 0.5, "a": [3, True, None], "arr": [[1.0, None], [None, 2.0]],
                 "nested": [{"x": -0.0}], "s": "text", "none": None}
  assert type(out["a"][0]) is int and type(out["a"][1]) is bool
  assert type(out["1"]) is float
  json.dumps(out, allow_nan=False)  # Valid strict JSON.
  assert io.json_safe(np.int32(7)) == 7 and io.json_safe(True) is True


def test_write_text_atomic_creates_folders_and_replaces(tmp_path):
  path = tmp_path / "a" / "b" / "note.md"
  out = io.write_text_atomic(path, "first ü\n")
  assert out == os.path.abspath(path) and os.path.isabs(out)
  assert path.read_text(encoding="utf-8") == "first ü\n"
  io.write_text_atomic(os.fspath(path), "second\n")
  assert path.read_text() == "second\n"
  assert _files(tmp_path) == [os.path.join("a", "b", "note.md")]


def test_write_json_atomic_is_sorted_strict_json(tmp_path):
  path = tmp_path / "r.json"
  io.write_json_atomic(path, {"b": np.float32(1.5), "a": [np.nan, 1]})
  text = path.read_text()
  assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
  assert json.loads(text) == {"a": [None, 1], "b": 1.5}
  assert "NaN" not in text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "r.json"
  io.write_json_atomic(path, {"ok": 1})
  with pytest.raises(TypeError):
    io.write_json_atomic(path, {"bad": object()})  # json.dumps fails before any write.
  with pytest.raises(RuntimeError, match="boom"):
    with io.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write('{"half": ')
      raise RuntimeError("boom")
  assert json.loads(path.read_text()) == {"ok": 1}
  assert _files(tmp_path) == ["r.json"]


def test_atomic_path_uses_unique_temporaries_beside_the_target(tmp_path):
  path = tmp_path / "x.txt"
  with io.atomic_path(path) as a, io.atomic_path(path) as b:
    assert a != b
    assert os.path.dirname(a) == os.path.dirname(b) == os.fspath(tmp_path)
    for t, text in ((a, "a"), (b, "b")):
      with open(t, "w") as f:
        f.write(text)
  assert path.read_text() == "a"  # The outer context finishes last.
  assert _files(tmp_path) == ["x.txt"]


def test_concurrent_writers_never_leave_a_mixed_file(tmp_path):
  path = tmp_path / "shared.json"
  payloads = [{"writer": i, "data": [i] * 2000} for i in range(8)]
  errors = []

  def write(p):
    try:
      for _ in range(5):
        io.write_json_atomic(path, p)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert json.loads(path.read_text()) in payloads
  assert _files(tmp_path) == ["shared.json"]


@pytest.mark.parametrize("compressed", [False, True])
def test_write_npz_atomic_round_trip(tmp_path, compressed):
  path = tmp_path / "sub" / "arrays.npz"
  a = np.arange(12, dtype=np.int32).reshape(3, 4)
  out = io.write_npz_atomic(path, compressed=compressed, a=a, b=np.float32(2.5))
  assert out == os.path.abspath(path)
  with np.load(path) as d:
    np.testing.assert_array_equal(d["a"], a)
    assert d["a"].dtype == np.int32 and float(d["b"]) == 2.5
  assert _files(tmp_path) == [os.path.join("sub", "arrays.npz")]  # Not "arrays.npz.npz".


@pytest.mark.parametrize("name,magic", [("f.png", b"\x89PNG"), ("f.pdf", b"%PDF"),
                                        ("f.svg", b"<?xm")])
def test_save_figure_atomic_format_from_the_name(tmp_path, name, magic):
  fig = Figure(figsize=(2, 2))
  fig.subplots().plot([0, 1], [1, 0])
  out = io.save_figure_atomic(fig, tmp_path / name, dpi=50)
  assert out == os.path.abspath(tmp_path / name)
  with open(out, "rb") as f:
    assert f.read(4) == magic
  assert _files(tmp_path) == [name]
  assert os.path.getsize(out) > 100


def test_copy_file_atomic(tmp_path):
  (tmp_path / "a.md").write_text("table")
  dst = io.copy_file_atomic(tmp_path / "a.md", tmp_path / "out" / "b.md")
  assert open(dst, encoding="utf-8").read() == "table"
  assert sorted(os.listdir(tmp_path / "out")) == ["b.md"]  # No temporary left.
