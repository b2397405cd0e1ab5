"""Tests of recoil_jax.data.builder_lib (TFDS build/reuse/staleness helpers) and of the source
checks in recoil_jax.data.pipeline, on fake builders (the real ones: test_*_dataset.py)."""

import os
import types

import numpy as np
import pytest

from recoil_jax.data import builder_lib
from recoil_jax.data import pipeline


# ------------------------------------------------------------------------ simulators


def test_simulator_registry_register_get_check():
  def sim_a(seed, n):
    return seed, n

  registry = builder_lib.SimulatorRegistry("demo_tfds", {"a": sim_a}, signature="fn(seed, n)")
  assert registry.get("a") is sim_a and "a" in registry and "b" not in registry
  registry.register("b_2", lambda seed, n: None)
  assert registry.names() == ["a", "b_2"] == list(registry) and len(registry) == 2
  registry.register("a", len)  # Re-registering replaces.
  assert registry.get("a") is len
  with pytest.raises(ValueError, match=r"demo_tfds: unknown simulator 'c'; registered: "
                     r"\['a', 'b_2'\]"):
    registry.get("c")
  with pytest.raises(ValueError, match="unknown simulator"):
    registry.check("c")
  for bad in ("", "a-b", "a/b", "a b", 3):
    with pytest.raises(ValueError, match="use letters, digits and '_'"):
      registry.register(bad, sim_a)
  with pytest.raises(ValueError, match=r"must be callable as fn\(seed, n\)"):
    registry.register("c", "not a function")
  assert "demo_tfds" in repr(registry)


def test_study_registries_are_separate_and_share_the_mechanism():
  from recoil_jax.studies.sbnd import dataset as sbnd_dataset  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.tpc import dataset as tpc_dataset  # pylint: disable=g-import-not-at-top
  for module, builtin in ((tpc_dataset, "electron_recoil"), (sbnd_dataset, "lartpc")):
    assert isinstance(module.SIMULATORS, builder_lib.SimulatorRegistry)
    assert builtin in module.SIMULATORS
    assert module.register_simulator.__self__ is module.SIMULATORS
  assert "lartpc" not in tpc_dataset.SIMULATORS and "electron_recoil" not in sbnd_dataset.SIMULATORS


# ------------------------------------------------------------------------ config names


def test_config_digest_is_canonical():
  a = {"n": 5, "energies": (40.0, 45.0), "files": (("train", (("p", 1, 2),)),), "none": None}
  digest = builder_lib.config_digest(a)
  assert len(digest) == builder_lib.DIGEST_LENGTH == 10 and int(digest, 16) >= 0
  # Key order, tuple vs list and numpy vs Python scalars do not change it.
  b = {"none": None, "files": [["train", [["p", 1, 2]]]], "energies": [np.float64(40.0), 45.0],
       "n": np.int64(5)}
  assert builder_lib.config_digest(b) == digest
  # Any changed value does.
  for key, value in (("n", 6), ("energies", (40.0,)), ("none", 0), ("files", ())):
    assert builder_lib.config_digest({**a, key: value}) != digest, key
  assert builder_lib.config_digest(a, length=64).startswith(digest)
  with pytest.raises(ValueError, match="digest length"):
    builder_lib.config_digest(a, length=0)


def test_config_digest_encodes_non_json_values_stably():
  big = np.arange(5000.0)
  changed = big.copy()
  changed[2500] = -1.0  # In the part numpy's repr would elide with "...".
  assert builder_lib.config_digest({"x": big}) != builder_lib.config_digest({"x": changed})
  assert builder_lib.config_digest({"x": big}) != builder_lib.config_digest(
      {"x": big.astype(np.float32)})
  assert (builder_lib.config_digest({"s": {3, 1, 2}})
          == builder_lib.config_digest({"s": frozenset((2, 3, 1))}))
  assert builder_lib.config_digest({"c": 1 + 2j}) == builder_lib.config_digest({"c": 1 + 2j})

  class Opaque:
    pass

  with pytest.raises(TypeError, match="no stable repr"):
    builder_lib.config_digest({"o": Opaque()})


def test_hashed_name():
  fields = {"n": 1}
  name = builder_lib.hashed_name("sim-x-n1", fields)
  assert name == f"sim-x-n1-{builder_lib.config_digest(fields)}"
  for bad in ("", "a/b"):
    with pytest.raises(ValueError, match="prefix"):
      builder_lib.hashed_name(bad, fields)


# ------------------------------------------------------------------------ input files


def test_file_stamps_and_check_files_unchanged(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("aaa")
  b.write_text("b")
  stamps = builder_lib.file_stamps([a, os.fspath(b)])
  assert stamps == ((os.fspath(a), 3, os.stat(a).st_mtime_ns),
                    (os.fspath(b), 1, os.stat(b).st_mtime_ns))
  builder_lib.check_files_unchanged("files['train']", [a, b], stamps, "cfg")  # No error.
  st = os.stat(a)
  os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # Touched: same size.
  with pytest.raises(ValueError, match=r"files\['train'\]: the files changed since the config "
                     r"cfg was made \(.*a\.txt: size/mtime .*\); make a new config"):
    builder_lib.check_files_unchanged("files['train']", [a, b], stamps, "cfg")
  with pytest.raises(ValueError, match=r"added \[\], removed \[.*b\.txt'\]"):
    builder_lib.check_files_unchanged("x", [a], builder_lib.file_stamps([a, b]), "cfg")
  with pytest.raises(ValueError, match="the order differs"):
    builder_lib.check_files_unchanged("x", [b, a], builder_lib.file_stamps([a, b]), "cfg")
  builder_lib.check_files_unchanged("x", [a], [list(builder_lib.file_stamps([a])[0])], "c")
  with pytest.raises(FileNotFoundError):
    builder_lib.file_stamps([tmp_path / "missing"])


# ------------------------------------------------------------------------ prepare / reuse


class FakeBuilder:
  """The part of a tfds builder builder_lib uses; ``download_and_prepare`` is recorded."""

  def __init__(self, data_dir, prepared=False, splits=("train", "test")):
    self.data_path = os.path.join(data_dir, "fake_dataset", "cfg-abc", "1.0.0")
    self._prepared = prepared
    self.calls = []
    self.info = types.SimpleNamespace(splits={s: None for s in splits})

  def is_prepared(self):
    return self._prepared

  def download_and_prepare(self, **kw):
    self.calls.append(kw)
    self._prepared = True


def test_prepare_or_reuse_builds_once_and_warns_about_leftovers(tmp_path, caplog):
  builder = FakeBuilder(tmp_path)
  assert builder_lib.stale_incomplete_dirs(builder) == []  # No config folder yet.
  assert builder_lib.prepare_or_reuse(builder, log_name="fake_tfds") is builder
  assert builder.calls == [{"file_format": "array_record"}]
  builder_lib.prepare_or_reuse(builder, log_name="fake_tfds")
  assert len(builder.calls) == 1  # Reused.

  config_dir = os.path.dirname(builder.data_path)
  os.makedirs(os.path.join(config_dir, "incomplete.XYZ_1.0.0"))
  os.makedirs(os.path.join(config_dir, "1.0.0"))
  stale = builder_lib.stale_incomplete_dirs(builder)
  assert stale == [os.path.join(config_dir, "incomplete.XYZ_1.0.0")]
  with caplog.at_level("WARNING"):
    builder_lib.prepare_or_reuse(FakeBuilder(tmp_path), log_name="fake_tfds",
                                 file_format="tfrecord")
  assert "fake_tfds: unfinished build folder" in caplog.text
  assert "incomplete.XYZ_1.0.0" in caplog.text
  assert os.path.isdir(stale[0])  # Never deleted: another build may be running.


def test_prepared_splits(tmp_path):
  builder = FakeBuilder(tmp_path, prepared=True, splits=("train", "validation", "test"))
  assert builder_lib.prepared_splits(builder, None, build_with="f") == [
      "train", "validation", "test"]
  assert builder_lib.prepared_splits(builder, ["test", "train"], build_with="f") == [
      "test", "train"]
  with pytest.raises(KeyError, match=r"fake_dataset.*no split\(s\) \['train_val'\]; available"):
    builder_lib.prepared_splits(builder, ["train_val"], build_with="f")
  with pytest.raises(ValueError, match="not prepared .*build it with demo.build"):
    builder_lib.prepared_splits(FakeBuilder(tmp_path), None, build_with="demo.build")


# ------------------------------------------------------------------------ pipeline checks


def test_normalise_index():
  assert pipeline.normalise_index(0, 3, "train") == 0
  assert pipeline.normalise_index(-1, 3, "train") == 2
  assert pipeline.normalise_index(np.int64(2), 3, "train") == 2
  for bad in (3, -4, 10**12):
    with pytest.raises(IndexError, match=rf"train: index {bad} out of range for a source "
                       "of 3 examples"):
      pipeline.normalise_index(bad, 3, "train")
  with pytest.raises(IndexError, match="empty: index 0 out of range .* 0 examples"):
    pipeline.normalise_index(0, 0, "empty")
  for bad in (1.0, "1", None, True, np.bool_(False)):
    with pytest.raises(TypeError, match="train: index .* expected an integer"):
      pipeline.normalise_index(bad, 3, "train")


def test_check_splits():
  available = ("train", "validation", "test")
  assert pipeline.check_splits(available, None, "ds") == list(available)
  assert pipeline.check_splits(available, ("test",), "ds") == ["test"]
  assert pipeline.check_splits(available, [], "ds") == []
  with pytest.raises(KeyError, match=r"ds: no split\(s\) \['val', 'x'\]; available \['train'"):
    pipeline.check_splits(available, ["train", "val", "x"], "ds")
  with pytest.raises(TypeError, match=r"use \['test'\]"):
    pipeline.check_splits(available, "test", "ds")
  with pytest.raises(ValueError, match="more than once"):
    pipeline.check_splits(available, ["test", "test"], "ds")


def test_study_sources_use_the_shared_index_check():
  from recoil_jax.studies.sbnd import source as sbnd_source  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.tpc import source as tpc_source  # pylint: disable=g-import-not-at-top
  ex = {"coords": np.zeros((1, 3), np.uint8), "charges": np.ones(1, np.float32),
        "direction": np.array([0, 0, 1], np.float32), "energy_kev": 40.0, "sigma_um": 200.0}
  with pytest.raises(IndexError, match="my_split: index 2 out of range"):
    tpc_source.TpcSource([ex, ex], max_voxels=4, name="my_split")[2]
  sparse = {"pixels": np.zeros(0, np.int32), "values": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.uint8), "interaction": 0, "neutrino_energy_gev": 0.0}
  with pytest.raises(IndexError, match="other: index -2 out of range"):
    sbnd_source.SbndSource([sparse], 2, 2, name="other")[-2]
  for module in (tpc_source, sbnd_source):
    assert not hasattr(module, "_normalise_index")
