"""Tests of the SBND TFDS builder (array_record, no TensorFlow) and the fixed-shape sources."""

import os

import numpy as np
import pytest

from recoil_jax.studies.sbnd import larcv
from recoil_jax.studies.sbnd import source as sbnd_source
from recoil_jax.studies.sbnd import dataset as sbnd_dataset
from recoil_jax.studies.sbnd import sim as lartpc

H, W = 16, 24
CALLS = {"n": 0}


def fake_events(seed, num_events, *, height, width, interaction_fractions, empty_first=False):
  """Cheap seeded stand-in for the simulator: sparse signed charges, labels on them, one
  labelled pixel without charge per plane; optionally an all-empty first event."""
  CALLS["n"] += 1
  rng = np.random.default_rng(seed)
  shape = (num_events, 3, height, width)
  active = rng.random(shape) < 0.05
  images = np.where(active, rng.normal(20.0, 15.0, shape), 0.0).astype(np.float32)
  labels = np.where(active, rng.integers(0, 3, shape), 0).astype(np.uint8)
  images[:, :, 1, 2] = 0.0
  labels[:, :, 1, 2] = 2
  interaction = rng.choice(4, num_events, p=interaction_fractions).astype(np.int32)
  energy = np.where(interaction == 0, 0.0, rng.gamma(3.0, 0.3, num_events)).astype(np.float32)
  if empty_first:
    images[0], labels[0] = 0.0, 0
  return lartpc.SbndEvents(images=images, labels=labels, interaction=interaction,
                           neutrino_energy_gev=energy)


sbnd_dataset.register_simulator("test_fake", fake_events)
SIZES = dict(num_train=5, num_validation=3, num_test=2)
ARGS = dict(SIZES, height=H, width=W, seed=3, chunk_size=2, simulator="test_fake",
            physics_kwargs={"empty_first": True})


def resimulate(split, seed=3, chunk_size=2, **kw):
  """The events of a split, simulated again from the documented per-chunk seeds."""
  n = SIZES[f"num_{split}"]
  chunks = [fake_events(sbnd_dataset.chunk_seed(seed, split, c), min(chunk_size, n - c * chunk_size),
                        height=H, width=W, interaction_fractions=(0.25,) * 4, **kw)
            for c in range(-(-n // chunk_size))]
  return [(c.images[j], c.labels[j], c.interaction[j], c.neutrino_energy_gev[j])
          for c in chunks for j in range(len(c.interaction))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return data_dir, sbnd_dataset.build_sbnd_dataset(os.fspath(data_dir), **ARGS)


def test_round_trip_against_resimulation(built):
  _, builder = built
  sources = sbnd_source.sbnd_sources(builder)
  assert sorted(sources) == sorted(sbnd_dataset.SPLITS)
  for split, src in sources.items():
    expected = resimulate(split, empty_first=True)
    assert len(src) == len(expected) == SIZES[f"num_{split}"]
    raw = builder.as_data_source(split)
    for i, (image, label, interaction, energy) in enumerate(expected):
      ex = src[i]
      assert {k: (v.shape, v.dtype) for k, v in ex.items()} == {
          "image": ((3, H, W), np.float32), "label": ((3, H, W), np.int32),
          **{k: (shape, np.dtype(dt)) for k, (dt, shape, _) in
             sbnd_source.EVENT_FIELDS.items()}}
      np.testing.assert_array_equal(ex["image"], image)
      np.testing.assert_array_equal(ex["label"], label)
      assert ex["interaction"] == interaction and ex["neutrino_energy_gev"] == energy
      # Where it came from: simulated (file -1), its index in the split, and the
      # (split code, chunk, event in chunk) that re-simulates it.
      assert ex["file_index"] == -1 and ex["entry"] == i
      assert ex["event_id"].tolist() == [sbnd_dataset.SPLITS.index(split), i // 2, i % 2]
      r = raw[i]
      assert r["pixels"].dtype == np.int32 and r["labels"].dtype == np.uint8
      assert (np.diff(r["pixels"]) > 0).all()
      # Stored: charged pixels plus labelled pixels without charge, nothing else.
      assert r["pixels"].size == np.count_nonzero((image != 0) | (label != 0))
    assert src[0]["image"].sum() == 0 and len(raw[0]["pixels"]) == 0  # the empty event
    np.testing.assert_array_equal(src[-1]["label"], src[len(src) - 1]["label"])


def test_stats_metadata(built):
  _, builder = built
  stats = sbnd_dataset.split_stats(builder)
  for split in sbnd_dataset.SPLITS:
    expected = resimulate(split, empty_first=True)
    images = np.stack([e[0] for e in expected])
    labels = np.stack([e[1] for e in expected])
    s = stats[split]
    assert s["events"] == len(expected)
    assert s["events_per_interaction"] == np.bincount([e[2] for e in expected],
                                                      minlength=4).tolist()
    n = 3 * len(expected)
    assert s["mean_active_pixels_per_plane"] == pytest.approx(np.count_nonzero(images) / n)
    assert s["mean_cosmic_pixels_per_plane"] == pytest.approx(np.sum(labels == 1) / n)
    assert s["mean_neutrino_pixels_per_plane"] == pytest.approx(np.sum(labels == 2) / n)
  assert builder.info.metadata["config"]["height"] == H


def test_rebuild_reuses_and_configs_do_not_collide(built):
  data_dir, builder = built
  calls = CALLS["n"]
  again = sbnd_dataset.build_sbnd_dataset(os.fspath(data_dir), **ARGS)
  assert CALLS["n"] == calls  # nothing simulated
  assert os.fspath(again.data_path) == os.fspath(builder.data_path)
  assert builder.builder_config.name.startswith("sim-test_fake-n5-v3-t2-16x24-s3-")
  base = dict(num_train=5, num_validation=3, num_test=2, height=H, width=W, seed=3)
  names = {sbnd_dataset.make_config(**base).name}
  for kw in (dict(num_train=6), dict(num_validation=4), dict(num_test=3), dict(height=17),
             dict(width=25), dict(seed=4), dict(chunk_size=3), dict(simulator="test_fake"),
             dict(interaction_fractions=(0.4, 0.2, 0.2, 0.2)),
             dict(physics_kwargs={"empty_first": True})):
    names.add(sbnd_dataset.make_config(**{**base, **kw}).name)
  assert len(names) == 11
  assert sbnd_dataset.make_config(**base).name == sbnd_dataset.make_config(**base).name
  with pytest.raises(ValueError, match="interaction_fractions"):
    sbnd_dataset.make_config(**base, interaction_fractions=(0.5, 0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="unknown simulator"):
    sbnd_dataset.make_config(**base, simulator="nope")
  with pytest.raises(ValueError, match="num_train, num_validation, num_test >= 1"):
    sbnd_dataset.make_config(**{**base, "num_test": 0})


def test_source_errors(built):
  _, builder = built
  src = sbnd_source.sbnd_sources(builder, splits=["validation"])["validation"]
  with pytest.raises(IndexError):
    src[len(src)]
  np.testing.assert_array_equal(src[-1]["image"], src[len(src) - 1]["image"])
  small = sbnd_source.SbndSource(builder.as_data_source("train"), H // 2, W, name="train")
  with pytest.raises(ValueError, match=r"train\[1\]: pixel index \d+ out of range for 3x8x24"):
    small[1]
  with pytest.raises(KeyError, match="no split"):
    sbnd_source.sbnd_sources(builder, splits=["train_val"])


def test_in_memory_source():
  events = fake_events(0, 3, height=H, width=W, interaction_fractions=(0.25,) * 4)
  src = sbnd_source.InMemorySbndSource(events)
  assert len(src) == 3 and (src.height, src.width) == (H, W)
  ex = src[2]
  np.testing.assert_array_equal(ex["image"], events.images[2])
  assert ex["label"].dtype == np.int32 and ex["interaction"].dtype == np.int32
  np.testing.assert_array_equal(ex["label"], events.labels[2])
  with pytest.raises(IndexError):
    src[3]


def test_with_the_lartpc_simulator(tmp_path):
  """The real simulator at a tiny resolution: simulator -> builder -> source is lossless."""
  h, w = 32, 64
  builder = sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path), num_train=2, num_validation=1,
                                         num_test=1, height=h, width=w, seed=11, chunk_size=2)
  assert builder.builder_config.name.startswith("sim-lartpc-n2-v1-t1-32x64-s11-")
  for split, src in sbnd_source.sbnd_sources(builder).items():
    n = len(src)
    events = lartpc.simulate_sbnd_events(sbnd_dataset.chunk_seed(11, split, 0), n, height=h,
                                         width=w, interaction_fractions=(0.25,) * 4)
    for i in range(n):
      ex = src[i]
      np.testing.assert_array_equal(ex["image"], events.images[i])
      np.testing.assert_array_equal(ex["label"], events.labels[i])
      assert ex["interaction"] == events.interaction[i]
      assert ex["neutrino_energy_gev"] == np.float32(events.neutrino_energy_gev[i])
  stats = sbnd_dataset.split_stats(builder)
  assert stats["train"]["events"] == 2 and stats["train"]["mean_active_pixels_per_plane"] > 0


def _cosmictagger_files(folder):
  """Three CosmicTagger files at full resolution (2H x 2W) of 3, 2 and 2 events; the first
  event of the second file has no charge (an empty larcv event)."""
  out = []
  for k, n in enumerate((3, 2, 2)):
    e = fake_events(100 + k, n, height=2 * H, width=2 * W, interaction_fractions=(0.25,) * 4)
    if k == 1:
      e.images[0] = 0
    path = os.fspath(folder / f"cosmic_tagging_{k}.h5")
    larcv.write_cosmictagger(path, e.images, e.labels)
    out.append(path)
  return out


def test_files_mode(tmp_path):
  folder = tmp_path / "files"
  folder.mkdir()
  paths = _cosmictagger_files(folder)
  spec = {"train": paths[:2], "validation": os.fspath(folder / "cosmic_tagging_2.h5")}
  builder = sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path / "tfds"), num_train=0,
                                         num_validation=0, num_test=0, height=H, width=W,
                                         seed=0, files=spec)
  assert builder.builder_config.name.startswith("files-n0-v0-t0-16x24-s0-")
  assert sorted(builder.info.splits.keys()) == ["train", "validation"]  # no test files
  sources = sbnd_source.sbnd_sources(builder)
  expected = {"train": [larcv.read_cosmictagger(p) for p in paths[:2]],
              "validation": [larcv.read_cosmictagger(paths[2])]}
  for split, parts in expected.items():
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    src = sources[split]
    assert len(src) == len(images)
    for i in range(len(src)):
      ex = src[i]
      np.testing.assert_array_equal(ex["image"], images[i])
      np.testing.assert_array_equal(ex["label"], labels[i])
      assert ex["interaction"] == -1 and np.isnan(ex["neutrino_energy_gev"])
  train_stats = sbnd_dataset.split_stats(builder)["train"]
  assert train_stats["events_unknown_interaction"] == 5
  assert train_stats["empty_events"] == 1  # Counted and reported, kept as a zero image.
  assert train_stats["empty_entries_by_file"] == {paths[1]: [0]}
  assert builder.info.metadata["files"]["train"] == paths[:2]

  # A cap reads the first events in file order; the name changes with it.
  capped = sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path / "tfds"), num_train=4,
                                        num_validation=0, num_test=0, height=H, width=W,
                                        seed=0, files=spec)
  assert capped.info.splits["train"].num_examples == 4
  assert capped.data_path != builder.data_path
  np.testing.assert_array_equal(sbnd_source.sbnd_sources(capped)["train"][3]["image"],
                                expected["train"][1].images[0])

  # Files at another resolution: the error names the file.
  with pytest.raises(ValueError, match=r"cosmic_tagging_0\.h5: images have shape "
                     r"\(3, 3, 8, 12\), the dataset expects \(3, 3, 16, 24\)"):
    sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path / "tfds"), num_train=0, num_validation=0,
                                 num_test=0, height=H, width=W, seed=0, files=spec,
                                 downsample=4)
  with pytest.raises(ValueError, match="unknown split key"):
    sbnd_dataset.make_config(**SIZES, height=H, width=W, seed=0, files={"training": paths})
  # A test file alone (an evaluation-only run) is a dataset of that split only.
  test_only = sbnd_dataset.make_config(**SIZES, height=H, width=W, seed=0, files={"test": paths})
  assert [s for s, _ in test_only.files] == ["test"]
  with pytest.raises(FileNotFoundError, match=r"files\['train'\]: .*none_\*\.h5"):
    sbnd_dataset.make_config(**SIZES, height=H, width=W, seed=0,
                          files={"train": os.fspath(folder / "none_*.h5")})

  # Files that change between making the config and building it are refused.
  config = sbnd_dataset.make_config(num_train=0, num_validation=0, num_test=0, height=H,
                                 width=W, seed=5, files=spec)
  e = fake_events(7, 1, height=2 * H, width=2 * W, interaction_fractions=(0.25,) * 4)
  larcv.write_cosmictagger(paths[2], e.images, e.labels)
  stale = sbnd_dataset.SbndWireImages(data_dir=os.fspath(tmp_path / "tfds"), config=config)
  with pytest.raises(ValueError, match=r"files\['validation'\]: the files changed since the "
                     r"config .*cosmic_tagging_2\.h5: size/mtime"):
    stale.download_and_prepare(file_format="array_record")
  assert not stale.is_prepared()


def test_failed_build_leaves_no_dataset(tmp_path):
  state = {"fail": True}

  def flaky(seed, num_events, **kw):
    if state["fail"] and num_events == 1:  # the test split: the others are written
      raise RuntimeError("simulator crashed")
    return fake_events(seed, num_events, **kw)

  sbnd_dataset.register_simulator("test_flaky", flaky)
  args = dict(num_train=2, num_validation=2, num_test=1, height=H, width=W, seed=0,
              simulator="test_flaky")
  with pytest.raises(RuntimeError, match="simulator crashed"):
    sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path), **args)
  config_dir = tmp_path / "sbnd_wire_images" / sbnd_dataset.make_config(**args).name
  assert not (config_dir / "1.0.0").exists()
  state["fail"] = False
  builder = sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path), **args)
  assert builder.is_prepared() and builder.info.splits["test"].num_examples == 1


@pytest.mark.slow
def test_paper_resolution_round_trip(tmp_path):
  """One simulated event per split at 3x640x1024 through builder and source, losslessly."""
  builder = sbnd_dataset.build_sbnd_dataset(os.fspath(tmp_path), num_train=1, num_validation=1,
                                         num_test=1, height=640, width=1024, seed=0)
  for split, src in sbnd_source.sbnd_sources(builder).items():
    events = lartpc.simulate_sbnd_events(sbnd_dataset.chunk_seed(0, split, 0), 1)
    ex = src[0]
    assert ex["image"].shape == (3, 640, 1024)
    np.testing.assert_array_equal(ex["image"], events.images[0])
    np.testing.assert_array_equal(ex["label"], events.labels[0])
    stats = sbnd_dataset.split_stats(builder)[split]
    assert stats["mean_active_pixels_per_plane"] == np.count_nonzero(events.images[0]) / 3


def test_source_min_abs_value_zeroes_specks_and_keeps_labels():
  h, w = 4, 4
  pixels = np.array([0, 5, 16 + 3, 2 * 16 + 7], np.int32)
  values = np.array([0.01, -2.0, 0.04, 0.3], np.float32)
  labels = np.array([1, 1, 2, 0], np.uint8)
  ex = {"pixels": pixels, "values": values, "labels": labels, "interaction": 1,
        "neutrino_energy_gev": 0.7}
  plain = sbnd_source.SbndSource([ex], h, w)[0]
  cut = sbnd_source.SbndSource([ex], h, w, min_abs_value=0.05)[0]
  np.testing.assert_array_equal(cut["label"], plain["label"])
  expected = np.where(np.abs(plain["image"]) >= 0.05, plain["image"], 0)
  np.testing.assert_array_equal(cut["image"], expected)
  assert cut["image"].reshape(-1)[5] == -2.0 and cut["image"].reshape(-1)[0] == 0
  with pytest.raises(ValueError, match="min_abs_value"):
    sbnd_source.SbndSource([ex], h, w, min_abs_value=-1)
