"""Tests of the TPC TFDS builder (array_record, no TensorFlow) and the fixed-shape sources."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import awkward as ak
import numpy as np
import pytest
import uproot

from recoil_jax.studies.tpc import degrad
from recoil_jax.studies.tpc import preprocess as tpc_preprocess
from recoil_jax.studies.tpc import source as tpc_source
from recoil_jax.studies.tpc import dataset as tpc_dataset

N_ELECTRONS = 200
MAX_VOXELS = 400
CALLS = {"n": 0}


def line_tracks(seed, energies_kev):
  """Noisy straight tracks from the origin along +z, denser toward the end, 0.5 mm/keV long;
  every track whose seeded draw is < 0.15 is 120 mm long (it must leave the grid)."""
  CALLS["n"] += 1
  rng = np.random.default_rng(seed)
  n = len(energies_kev)
  u = np.sqrt(rng.random((n, N_ELECTRONS)))
  length = 0.5 * np.asarray(energies_kev)[:, None] * np.where(rng.random((n, 1)) < 0.15, 6, 1)
  pos = np.zeros((n, N_ELECTRONS, 3), np.float32)
  pos[..., 2] = u * length
  pos[..., :2] = rng.normal(0.0, 0.2, (n, N_ELECTRONS, 2)) * u[..., None]
  return pos, np.full(n, N_ELECTRONS, np.int32)


tpc_dataset.register_simulator("test_lines", line_tracks)


def build(data_dir, **kw):
  args = dict(num_train_val=50, num_test=20, max_voxels=MAX_VOXELS, seed=3, chunk_size=16,
              simulator="test_lines")
  args.update(kw)
  return tpc_dataset.build_tpc_dataset(os.fspath(data_dir), **args)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return data_dir, build(data_dir)


def test_split_sizes_and_discards(built):
  _, builder = built
  counts = tpc_dataset.discard_counts(builder)
  assert set(counts) == set(tpc_dataset.SPLITS)
  # 80/20 of the 50-event pool, 20 per test set (numbers simulated).
  assert (counts["train"].total, counts["validation"].total) == (40, 10)
  assert counts["test_40keV_200um"].total == counts["test_50keV_443um"].total == 20
  for split, c in counts.items():
    assert builder.info.splits[split].num_examples == c.kept
    assert c.total == c.kept + c.outside_grid + c.too_many_voxels + c.empty
  # The 120 mm tracks were dropped, and counted.
  assert sum(c.outside_grid for c in counts.values()) > 0


def test_features_shapes_dtypes_and_fixed_test_sets(built):
  _, builder = built
  for split in tpc_dataset.SPLITS:
    ds = builder.as_data_source(split)
    energies, sigmas = [], []
    for i in range(len(ds)):
      ex = ds[i]
      n = ex["charges"].shape[0]
      assert ex["coords"].shape == (n, 3) and ex["coords"].dtype == np.uint8
      assert ex["charges"].dtype == np.float32 and (ex["charges"] > 0).all()
      assert ex["charges"].sum() == N_ELECTRONS  # charge survives the round trip
      assert ex["coords"].max() < tpc_preprocess.GRID_SIZE
      assert len({tuple(c) for c in ex["coords"]}) == n  # distinct voxels
      assert ex["direction"].shape == (3,) and ex["direction"].dtype == np.float32
      np.testing.assert_allclose(np.linalg.norm(ex["direction"]), 1.0, rtol=1e-6)
      energies.append(float(ex["energy_kev"]))
      sigmas.append(float(ex["sigma_um"]))
    if split in tpc_dataset.TEST_SPLITS:
      energy, sigma = tpc_dataset.TEST_SPLITS[split]
      assert set(energies) == {energy} and set(sigmas) == {sigma}
    else:
      assert set(energies) <= {40.0, 45.0, 50.0} and len(set(energies)) == 3
      assert min(sigmas) >= 160.0 and max(sigmas) <= 466.0 and len(set(sigmas)) == len(sigmas)


def test_rebuild_reuses_and_sizes_do_not_collide(built):
  data_dir, builder = built
  calls = CALLS["n"]
  again = build(data_dir)
  assert CALLS["n"] == calls  # nothing simulated
  assert os.fspath(again.data_path) == os.fspath(builder.data_path)
  a = tpc_dataset.make_config(num_train_val=50, num_test=20, max_voxels=400, seed=3)
  names = {a.name}
  for kw in (dict(num_test=21), dict(num_train_val=51), dict(max_voxels=401), dict(seed=4),
             dict(energies_kev=(40.0,)), dict(sigma_range_um=(160.0, 400.0))):
    args = dict(num_train_val=50, num_test=20, max_voxels=400, seed=3)
    args.update(kw)
    names.add(tpc_dataset.make_config(**args).name)
  assert len(names) == 7
  assert a.name.startswith("sim-electron_recoil-n50-t20-v400-s3-")
  assert tpc_dataset.make_config(num_train_val=50, num_test=20, max_voxels=400, seed=3).name == a.name
  with pytest.raises(ValueError, match=r"unknown simulator 'nope'; registered: \[.*"
                     r"'electron_recoil'.*'test_lines'"):
    tpc_dataset.make_config(num_train_val=50, num_test=20, max_voxels=400, seed=3,
                            simulator="nope")


def test_source_returns_fixed_shapes(built):
  _, builder = built
  sources = tpc_source.tpc_sources(builder, MAX_VOXELS)
  expected = {"coords": ((MAX_VOXELS, 3), np.int32), "charges": ((MAX_VOXELS,), np.float32),
              "num_voxels": ((), np.int32), "direction": ((3,), np.float32),
              "energy_kev": ((), np.float32), "sigma_um": ((), np.float32)}
  for split, src in sources.items():
    assert len(src) == builder.info.splits[split].num_examples
    for i in (0, len(src) - 1):
      ex = src[i]
      assert {k: (v.shape, v.dtype) for k, v in ex.items()} == expected
      n = int(ex["num_voxels"])
      raw = builder.as_data_source(split)[i]
      np.testing.assert_array_equal(ex["coords"][:n], raw["coords"])
      assert (ex["coords"][n:] == 0).all() and (ex["charges"][n:] == 0).all()
    np.testing.assert_array_equal(src[-1]["charges"], src[len(src) - 1]["charges"])
    with pytest.raises(IndexError):
      src[len(src)]
  small = tpc_source.TpcSource(builder.as_data_source("train"), max_voxels=5, name="train")
  with pytest.raises(ValueError, match=r"train\[0\]: \d+ voxels > max_voxels=5"):
    small[0]
  with pytest.raises(KeyError, match="no split"):
    tpc_source.tpc_sources(builder, MAX_VOXELS, splits=["test"])


def test_in_memory_source():
  pos, num = line_tracks(0, np.full(10, 40.0))
  tracks, _ = tpc_preprocess.preprocess_tracks(pos, num, 40.0, np.random.default_rng(0),
                                               200.0, max_voxels=300)
  src = tpc_source.InMemoryTpcSource(tracks, max_voxels=320)
  assert len(src) == len(tracks)
  ex = src[1]
  assert ex["coords"].shape == (320, 3) and ex["charges"].shape == (320,)
  n = int(ex["num_voxels"])
  np.testing.assert_array_equal(ex["charges"][:n], tracks.charges[1, :n])
  assert ex["charges"].sum() == num[tracks.source_index[1]]
  with pytest.raises(ValueError, match="max_voxels=10"):
    tpc_source.InMemoryTpcSource(tracks, max_voxels=10)


def _write_root_cm(path, tracks_mm):
  cols = {k: ak.Array([(t[:, i] / 10.0).tolist() for t in tracks_mm]) for i, k in enumerate("xyz")}
  with uproot.recreate(path) as f:
    f.mktree("degrad", {k: "var * float64" for k in "xyz"}).extend(cols)


def _file_tracks(seed, n, energy):
  pos, num = line_tracks(seed, np.full(n, energy))
  return [pos[i, :num[i]] for i in range(n)]


def test_degrad_files_mode(tmp_path):
  files = tmp_path / "files"
  files.mkdir()
  _write_root_cm(files / "he_co2_40keV_0.root", _file_tracks(1, 20, 40.0))
  _write_root_cm(files / "he_co2_45keV_0.root", _file_tracks(2, 20, 45.0))
  degrad.write_electron_npz(files / "test40.npz", _file_tracks(3, 8, 40.0))
  degrad.write_electron_text(files / "test50.txt", _file_tracks(4, 6, 50.0))
  spec = {"train_val": os.fspath(files / "he_co2_*keV_*.root"),
          "test_40keV_200um": os.fspath(files / "test40.npz"),
          "test_50keV_443um": os.fspath(files / "test50.txt")}
  builder = tpc_dataset.build_tpc_dataset(os.fspath(tmp_path / "tfds"), num_train_val=0,
                                       num_test=0, max_voxels=MAX_VOXELS, seed=1,
                                       degrad_files=spec)
  assert builder.builder_config.name.startswith("degrad-")
  counts = tpc_dataset.discard_counts(builder)
  assert counts["train"].total + counts["validation"].total == 40
  assert 0 < counts["validation"].total < counts["train"].total
  assert counts["test_40keV_200um"].total == 8 and counts["test_50keV_443um"].total == 6
  energies = {float(ex["energy_kev"]) for ex in builder.as_data_source("train")}
  assert energies == {40.0, 45.0}
  ex = builder.as_data_source("test_50keV_443um")[0]
  assert (float(ex["energy_kev"]), float(ex["sigma_um"])) == (50.0, 443.0)
  assert ex["charges"].sum() == N_ELECTRONS  # cm -> mm handled: the track fits the grid
  assert sorted(builder.info.metadata["files"]) == sorted(spec)

  # A cap on the pool; the name changes with it.
  capped = tpc_dataset.build_tpc_dataset(os.fspath(tmp_path / "tfds"), num_train_val=25,
                                      num_test=0, max_voxels=MAX_VOXELS, seed=1,
                                      degrad_files=spec)
  c = tpc_dataset.discard_counts(capped)
  assert c["train"].total + c["validation"].total == 25
  assert capped.data_path != builder.data_path

  # A file whose energy cannot be told, and a pattern without files: clear errors.
  _write_root_cm(files / "unlabelled.root", _file_tracks(5, 2, 40.0))
  with pytest.raises(ValueError, match=r"energy of .*unlabelled\.root"):
    tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=10, seed=0,
                         degrad_files={"train_val": os.fspath(files / "*.root")})
  with pytest.raises(FileNotFoundError, match=r"'train_val'.*matches no file"):
    tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=10, seed=0,
                         degrad_files={"train_val": os.fspath(files / "none_*.root")})
  with pytest.raises(ValueError, match="either 'train_val' or both"):
    tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=10, seed=0,
                         degrad_files={"train": os.fspath(files / "test40.npz")})
  with pytest.raises(ValueError, match="matched more than once"):
    tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=10, seed=0,
                         degrad_files={"train_val": {40: os.fspath(files / "*40keV*.root"),
                                                     45: os.fspath(files / "*keV*.root")}})

  # Files that change between making the config and building it are refused.
  config = tpc_dataset.make_config(num_train_val=0, num_test=0, max_voxels=MAX_VOXELS, seed=2,
                                degrad_files=spec)
  degrad.write_electron_npz(files / "test40.npz", _file_tracks(6, 9, 40.0))
  stale = tpc_dataset.TpcTracks(data_dir=os.fspath(tmp_path / "tfds"), config=config)
  with pytest.raises(ValueError, match=r"'test_40keV_200um'.*changed since the config "
                     r".*test40\.npz: size/mtime"):
    stale.download_and_prepare(file_format="array_record")
  assert not stale.is_prepared()


_KILL_SCRIPT = textwrap.dedent("""
    import pathlib, sys, time
    import numpy as np
    from recoil_jax.studies.tpc import dataset as tpc_dataset
    marker = pathlib.Path(sys.argv[2])
    def slow(seed, energies):
      if (np.asarray(energies) == 50.0).all():  # the last split: the others are written
        marker.write_text("in the last split")
        time.sleep(600)  # the test kills us here
      n = len(energies)
      pos = np.zeros((n, 10, 3), np.float32)
      pos[..., 2] = np.linspace(0.0, 5.0, 10)
      return pos, np.full(n, 10, np.int32)
    tpc_dataset.register_simulator("slow", slow)
    tpc_dataset.build_tpc_dataset(sys.argv[1], num_train_val=20, num_test=4, max_voxels=64,
                               seed=0, chunk_size=8, simulator="slow")
""")


def test_killed_build_does_not_look_complete(tmp_path, caplog):
  data_dir = tmp_path / "tfds"
  marker = tmp_path / "marker"
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.fspath(repo),
                                                     os.environ.get("PYTHONPATH", "")]))
  log = tmp_path / "child.log"
  with open(log, "wb") as out:
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, os.fspath(data_dir),
                             os.fspath(marker)], env=env, stdout=out, stderr=out)
    try:
      deadline = time.monotonic() + 120
      while not marker.exists():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the build never reached the last split"
        time.sleep(0.1)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  (config_dir,) = list((data_dir / "tpc_tracks").iterdir())
  entries = sorted(p.name for p in config_dir.iterdir())
  assert len(entries) == 1 and entries[0].startswith("incomplete."), entries
  written = sorted(p.name for p in (config_dir / entries[0]).iterdir())
  # Three splits were already written when the process died, but nothing looks complete.
  assert sum(".array_record-" in name for name in written) == 3, written
  assert "dataset_info.json" not in written
  assert not (config_dir / "1.0.0").exists()
  builder = tpc_dataset.TpcTracks(data_dir=os.fspath(data_dir),
                               config=tpc_dataset.TpcTracksConfig(name=config_dir.name))
  assert not builder.is_prepared()

  # The next build (same config name) starts afresh and reports the leftover folder.
  def fast(seed, energies):  # the child's tracks, without the sleep
    del seed
    pos = np.zeros((len(energies), 10, 3), np.float32)
    pos[..., 2] = np.linspace(0.0, 5.0, 10)
    return pos, np.full(len(energies), 10, np.int32)

  tpc_dataset.register_simulator("slow", fast)
  with caplog.at_level("WARNING"):
    rebuilt = tpc_dataset.build_tpc_dataset(os.fspath(data_dir), num_train_val=20, num_test=4,
                                         max_voxels=64, seed=0, chunk_size=8, simulator="slow")
  assert rebuilt.is_prepared() and rebuilt.builder_config.name == config_dir.name
  assert "unfinished build folder" in caplog.text and entries[0] in caplog.text
  assert rebuilt.info.splits["train"].num_examples == tpc_dataset.discard_counts(rebuilt)["train"].kept


@pytest.mark.slow
def test_with_the_electron_recoil_simulator(tmp_path):
  pytest.importorskip("recoil_jax.physics.electron_recoils")
  builder = tpc_dataset.build_tpc_dataset(os.fspath(tmp_path), num_train_val=10, num_test=4,
                                       max_voxels=1536, seed=0)
  counts = tpc_dataset.discard_counts(builder)
  assert (counts["train"].total, counts["validation"].total) == (8, 2)
  for split, src in tpc_source.tpc_sources(builder, 1536).items():
    assert len(src) == counts[split].kept
    for i in range(len(src)):
      ex = src[i]
      # ≈ E/W ionisation electrons (W ≈ 34.3 eV), all inside the grid.
      assert 0.8 < ex["charges"].sum() * 0.0343 / ex["energy_kev"] < 1.2
