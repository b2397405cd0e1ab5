"""Tests of the CosmicTagger larcv3 HDF5 reader and fixture writer (h5py only)."""

import logging
import os

import h5py
import numpy as np
import pytest

from recoil_jax.studies.sbnd import larcv
from recoil_jax.studies.sbnd import sim as lartpc


def random_events(seed, n=3, ticks=8, wires=12, occupancy=0.3):
  """Images [n, 3, ticks, wires] with signed values, labels on active pixels, plus one
  labelled pixel without charge per plane (truth below threshold)."""
  rng = np.random.default_rng(seed)
  shape = (n, 3, ticks, wires)
  active = rng.random(shape) < occupancy
  images = np.where(active, rng.normal(10.0, 8.0, shape), 0.0).astype(np.float32)
  images[images == 0] = 0.0
  labels = np.where(active, rng.integers(0, 3, shape), 0).astype(np.uint8)
  images[:, :, 0, 0] = 0.0
  labels[:, :, 0, 0] = 1
  return images, labels


def write(tmp_path, images, labels, name="events.h5", **kw):
  path = os.fspath(tmp_path / name)
  larcv.write_cosmictagger(path, images, labels, **kw)
  return path


def loop_average(images, f):
  """Explicit-loop block average (the slow reference of the vectorised pooling)."""
  n, p, h, w = images.shape
  out = np.zeros((n, p, h // f, w // f), np.float64)
  for i in range(n):
    for q in range(p):
      for r in range(h // f):
        for c in range(w // f):
          out[i, q, r, c] = images[i, q, r * f:(r + 1) * f, c * f:(c + 1) * f].astype(
              np.float64).sum() / (f * f)
  return out.astype(np.float32)


def loop_max(labels, f):
  n, p, h, w = labels.shape
  out = np.zeros((n, p, h // f, w // f), np.uint8)
  for i in range(n):
    for q in range(p):
      for r in range(h // f):
        for c in range(w // f):
          out[i, q, r, c] = labels[i, q, r * f:(r + 1) * f, c * f:(c + 1) * f].max()
  return out


def test_round_trip_full_resolution(tmp_path):
  images, labels = random_events(0)
  path = write(tmp_path, images, labels, event_ids=np.array([[1, 2, 3], [1, 2, 4], [7, 0, 9]]))
  events = larcv.read_cosmictagger(path, downsample=1)
  assert events.images.dtype == np.float32 and events.labels.dtype == np.uint8
  np.testing.assert_array_equal(events.images, images)
  np.testing.assert_array_equal(events.labels, labels)
  np.testing.assert_array_equal(events.interaction, [-1, -1, -1])
  assert np.isnan(events.neutrino_energy_gev).all()
  assert larcv.num_events(path) == 3
  with h5py.File(path) as f:
    np.testing.assert_array_equal(f["/Events/event_id"]["event"], [3, 4, 9])
    g = f[larcv.group_path("sbndwire")]
    assert g["voxels"].dtype == larcv.VOXEL_DTYPE
    meta = g["image_meta"][:]
    np.testing.assert_array_equal(meta["number_of_voxels"], np.tile([12, 8], (9, 1)))
    np.testing.assert_array_equal(meta["projection_id"], np.tile([0, 1, 2], 3))
    # Zero-suppressed: image voxels are the non-zero pixels, sorted by id.
    ids = g["voxels"]["id"]
    first, n = g["voxel_extents"][0]["first"], g["voxel_extents"][0]["N"]
    assert n == np.count_nonzero(images[0, 0])
    assert (np.diff(ids[first:first + n].astype(np.int64)) > 0).all()


def test_downsampling_average_and_max(tmp_path):
  images, labels = random_events(1, n=2, ticks=8, wires=12)
  path = write(tmp_path, images, labels)
  for f in (2, 4):
    events = larcv.read_cosmictagger(path, downsample=f)
    assert events.images.shape == (2, 3, 8 // f, 12 // f)
    # float64 block sums cast to float32 on both sides: equal up to the last float32 bit.
    np.testing.assert_allclose(events.images, loop_average(images, f), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(events.labels, loop_max(labels, f))
    # The dense numpy references agree with the loops too.
    np.testing.assert_allclose(larcv.downsample_images(images, f), loop_average(images, f),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(larcv.downsample_labels(labels, f), loop_max(labels, f))
  # A hand-checked block: one charge of 4 among four pixels averages to 1; a neutrino
  # pixel wins the block's label over a cosmic one.
  img = np.zeros((1, 3, 2, 2), np.float32)
  lab = np.zeros((1, 3, 2, 2), np.uint8)
  img[0, 0, 0, 1] = 4.0
  lab[0, 0, 0, 1], lab[0, 0, 1, 0] = 1, 2
  events = larcv.read_cosmictagger(write(tmp_path, img, lab, "block.h5"), downsample=2)
  assert events.images[0, 0, 0, 0] == 1.0 and events.labels[0, 0, 0, 0] == 2
  assert events.images[0, 1:].sum() == 0 and events.labels[0, 1:].sum() == 0


def test_iteration_in_chunks_and_ranges(tmp_path):
  images, labels = random_events(2, n=5)
  path = write(tmp_path, images, labels)
  whole = larcv.read_cosmictagger(path, downsample=2)
  chunks = list(larcv.iter_cosmictagger(path, downsample=2, chunk_size=2))
  assert [len(c.interaction) for c in chunks] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
  part = larcv.read_cosmictagger(path, downsample=2, start=1, max_events=3)
  np.testing.assert_array_equal(part.labels, whole.labels[1:4])
  assert len(larcv.read_cosmictagger(path, downsample=1, max_events=0).interaction) == 0


def test_threshold_zeroes_small_charges_before_pooling(tmp_path):
  images, labels = random_events(3, n=2)
  path = write(tmp_path, images, labels)
  events = larcv.read_cosmictagger(path, downsample=2, threshold=5.0)
  expected = loop_average(np.where(images >= 5.0, images, 0).astype(np.float32), 2)
  np.testing.assert_allclose(events.images, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(events.labels, loop_max(labels, 2))  # truth kept


def test_paper_geometry_orientation(tmp_path):
  """number_of_voxels [2048, 1280]: id = wire * 1280 + time lands at row time // 2,
  column wire // 2 of a [3, 640, 1024] plane."""
  images = np.zeros((1, 3, 1280, 2048), np.float32)
  labels = np.zeros((1, 3, 1280, 2048), np.uint8)
  images[0, 2, 1001, 1500] = 8.0  # (time 1001, wire 1500) on the collection plane
  labels[0, 2, 1001, 1500] = 2
  images[0, 0, 3, 7] = 2.0
  path = write(tmp_path, images, labels)
  with h5py.File(path) as f:
    g = f[larcv.group_path("sbndwire")]
    np.testing.assert_array_equal(g["image_meta"][0]["number_of_voxels"], [2048, 1280])
    ids = g["voxels"]["id"]
    assert 1500 * 1280 + 1001 in ids and 7 * 1280 + 3 in ids
  events = larcv.read_cosmictagger(path)  # downsample=2: the paper's resolution
  assert events.images.shape == (1, 3, 640, 1024)
  assert events.images[0, 2, 500, 750] == 2.0 and events.labels[0, 2, 500, 750] == 2
  assert events.images[0, 0, 1, 3] == 0.5
  assert np.count_nonzero(events.images) == 2 and np.count_nonzero(events.labels) == 1


def _old_layout_file(path):
  """A larcv3 file built with raw h5py calls in an older release's layout (uint32
  ``first``, IDExtents fields ordered first/ID/N, a bool ``valid``), projections out of
  order, one event without projections. Returns the expected dense arrays."""
  nw, nt = 6, 4  # number_of_voxels = (wires, ticks)
  ext_t = np.dtype([("first", "<u4"), ("N", "<u4")])
  vext_t = np.dtype([("first", "<u4"), ("ID", "<u4"), ("N", "<u4")])
  meta_t = np.dtype([("valid", "?"), ("projection_id", "<u8"), ("image_sizes", "<f8", (2,)),
                     ("number_of_voxels", "<u8", (2,)), ("origin", "<f8", (2,))])
  vox_t = np.dtype([("id", "<u8"), ("value", "<f4")])
  # Event 0: plane 2 then plane 0 (plane 1 absent); event 1: nothing.
  # (plane, wire, time, value, label)
  hits = [(2, 5, 3, 7.5, 2), (2, 0, 0, 1.0, 1), (0, 1, 2, -3.0, 0)]
  expected_img = np.zeros((2, 3, nt, nw), np.float32)
  expected_lab = np.zeros((2, 3, nt, nw), np.uint8)
  for plane, wire, time, value, label in hits:
    expected_img[0, plane, time, wire] = value
    expected_lab[0, plane, time, wire] = label
  with h5py.File(path, "w") as f:
    ev = np.zeros(2, [("run", "<i8"), ("subrun", "<i8"), ("event", "<i8")])
    f.create_dataset("Events/event_id", data=ev)
    for producer, col in (("sbndwire", 3), ("sbnd_cosmicseg", 4)):
      g = f.create_group(f"Data/sparse2d_{producer}_group")
      g.create_dataset("extents", data=np.array([(0, 2), (2, 0)], ext_t))
      g.create_dataset("voxel_extents", data=np.array([(0, 2, 2), (2, 0, 1)], vext_t))
      meta = np.zeros(2, meta_t)
      meta["valid"] = True
      meta["projection_id"] = [2, 0]
      meta["number_of_voxels"] = [nw, nt]
      g.create_dataset("image_meta", data=meta)
      vox = np.array([(h[1] * nt + h[2], h[col]) for h in hits], vox_t)  # id = wire*nt + time
      g.create_dataset("voxels", data=vox)
  return expected_img, expected_lab


def test_hand_built_file_in_an_older_layout(tmp_path):
  path = os.fspath(tmp_path / "hand.h5")
  expected_img, expected_lab = _old_layout_file(path)
  events = larcv.read_cosmictagger(path, downsample=1)
  np.testing.assert_array_equal(events.images, expected_img)
  np.testing.assert_array_equal(events.labels, expected_lab)
  events = larcv.read_cosmictagger(path, downsample=2)
  np.testing.assert_allclose(events.images, loop_average(expected_img, 2), rtol=1e-6)
  np.testing.assert_array_equal(events.labels, loop_max(expected_lab, 2))


def _modify(path, producer, dataset, fn):
  with h5py.File(path, "r+") as f:
    g = f[larcv.group_path(producer)]
    data = g[dataset][:]
    data = fn(data)
    del g[dataset]
    g.create_dataset(dataset, data=data)


@pytest.fixture
def good_file(tmp_path):
  images, labels = random_events(4, n=3)
  return write(tmp_path, images, labels)


def test_missing_group_and_events(good_file):
  with h5py.File(good_file, "r+") as f:
    del f[larcv.group_path("sbnd_cosmicseg")]
  with pytest.raises(ValueError, match=r"events\.h5: missing group "
                     r"/Data/sparse2d_sbnd_cosmicseg_group"):
    larcv.read_cosmictagger(good_file)
  with h5py.File(good_file, "r+") as f:
    del f["/Events"]
  with pytest.raises(ValueError, match=r"events\.h5: missing dataset /Events/event_id"):
    larcv.read_cosmictagger(good_file)


def test_wrong_dtypes(good_file):
  _modify(good_file, "sbndwire", "voxels",
          lambda v: np.array([(int(i), str(x)) for i, x in v[:3]],
                             [("id", "<u8"), ("value", "S8")]))
  with pytest.raises(ValueError, match=r"sparse2d_sbndwire_group/voxels: field 'value' has "
                     r"dtype .*expected kind float"):
    larcv.read_cosmictagger(good_file)


def test_missing_field(tmp_path):
  images, labels = random_events(5, n=2)
  path = write(tmp_path, images, labels)
  _modify(path, "sbnd_cosmicseg", "voxel_extents",
          lambda v: np.array(v[["first", "N"]].tolist(), [("first", "<u8"), ("N", "<u4")]))
  with pytest.raises(ValueError, match=r"sparse2d_sbnd_cosmicseg_group/voxel_extents: dtype "
                     r".* has no field 'ID'"):
    larcv.read_cosmictagger(path)


def test_event_counts_must_agree(tmp_path):
  images, labels = random_events(6, n=3)
  path = write(tmp_path, images, labels)
  # Labels in a separate file with a different number of events.
  label_file = write(tmp_path, images[:2], labels[:2], name="labels.h5")
  with pytest.raises(ValueError, match=r"labels\.h5: /Events/event_id: 2 events, the image "
                     r"file .*events\.h5 has 3"):
    larcv.read_cosmictagger(path, label_path=label_file)
  same = write(tmp_path, images, labels, name="labels_ok.h5")
  events = larcv.read_cosmictagger(path, label_path=same, downsample=1)
  np.testing.assert_array_equal(events.labels, labels)
  # In one file: the label group has an event fewer.
  _modify(path, "sbnd_cosmicseg", "extents", lambda e: e[:2])
  with pytest.raises(ValueError, match=r"sparse2d_sbnd_cosmicseg_group/extents: 2 events, "
                     r"the image file .* has 3"):
    larcv.read_cosmictagger(path)


def test_voxel_id_out_of_range(good_file):
  with h5py.File(good_file) as f:
    vext = f[larcv.group_path("sbndwire")]["voxel_extents"][:]
  row = 4  # event 1, projection 1

  def corrupt(v):
    v["id"][vext["first"][row]] = 12 * 8  # one past the last pixel of 12 wires x 8 ticks
    return v

  _modify(good_file, "sbndwire", "voxels", corrupt)
  with pytest.raises(ValueError, match=r"events\.h5: /Data/sparse2d_sbndwire_group/voxels: "
                     r"event 1: projection 1: voxel id 96 out of range"):
    larcv.read_cosmictagger(good_file)


@pytest.mark.parametrize("bad", [3.0, 1.5, -1.0])
def test_label_values_outside_classes(good_file, bad):
  def corrupt(v):
    v["value"][-1] = bad  # the last voxel: event 2, projection 2
    return v

  _modify(good_file, "sbnd_cosmicseg", "voxels", corrupt)
  with pytest.raises(ValueError, match=r"sparse2d_sbnd_cosmicseg_group/voxels: event 2: "
                     r"projection 2: label value .* not in \{0, 1, 2\}"):
    larcv.read_cosmictagger(good_file)


def test_inconsistent_metas_and_extents(tmp_path):
  images, labels = random_events(7, n=2)
  path = write(tmp_path, images, labels)

  def shrink(m):
    m["number_of_voxels"][4] = [12, 4]  # event 1, projection 1
    return m

  _modify(path, "sbndwire", "image_meta", shrink)
  with pytest.raises(ValueError, match=r"sparse2d_sbndwire_group/image_meta: event 1: "
                     r"projection 1 has number_of_voxels \[12, 4\], expected \[12, 8\]"):
    larcv.read_cosmictagger(path)
  path = write(tmp_path, images, labels, name="b.h5")
  _modify(path, "sbndwire", "extents", lambda e: np.concatenate(
      [e[:1], np.array([(5, 3)], e.dtype)]))
  with pytest.raises(ValueError, match=r"b\.h5: /Data/sparse2d_sbndwire_group/extents: "
                     r"event 1: rows \[5, 8\) outside voxel_extents \(6 rows\)"):
    larcv.read_cosmictagger(path)
  path = write(tmp_path, images, labels, name="c.h5")

  def repeat_projection(v):
    v["ID"] = [0, 1, 1, 0, 1, 2]
    return v

  _modify(path, "sbndwire", "voxel_extents", repeat_projection)
  with pytest.raises(ValueError, match=r"c\.h5: .*voxel_extents: event 0: projection 1 "
                     r"appears twice"):
    larcv.read_cosmictagger(path)
  path = write(tmp_path, images, labels, name="e.h5")

  def duplicate(v):
    v["id"][1] = v["id"][0]  # event 0, projection 0
    return v

  _modify(path, "sbndwire", "voxels", duplicate)
  with pytest.raises(ValueError, match=r"e\.h5: .*sbndwire_group/voxels: event 0: projection 0: "
                     r"duplicate voxel ids"):
    larcv.read_cosmictagger(path)
  with pytest.raises(ValueError, match=r"not divisible by downsample=3"):
    larcv.read_cosmictagger(write(tmp_path, images, labels, name="d.h5"), downsample=3)


def test_not_hdf5_and_writer_checks(tmp_path):
  bogus = tmp_path / "bogus.h5"
  bogus.write_text("not hdf5")
  with pytest.raises(ValueError, match=r"bogus\.h5: cannot open as HDF5"):
    larcv.read_cosmictagger(bogus)
  images, labels = random_events(8, n=1)
  with pytest.raises(ValueError, match="values must be 0, 1 or 2"):
    larcv.write_cosmictagger(tmp_path / "x.h5", images, labels + 2)
  with pytest.raises(ValueError, match="labels_full_res shape"):
    larcv.write_cosmictagger(tmp_path / "x.h5", images, labels[:, :2])
  assert not (tmp_path / "x.h5").exists()


def test_writer_is_atomic(tmp_path, monkeypatch):
  images, labels = random_events(9, n=2)
  path = write(tmp_path, images, labels)
  before = open(path, "rb").read()

  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(larcv, "_write_producer", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    larcv.write_cosmictagger(path, images[:1], labels[:1])
  assert open(path, "rb").read() == before  # the old file is untouched
  assert sorted(os.listdir(tmp_path)) == ["events.h5"]  # no temporary file left


def test_empty_events_are_counted_and_reported(tmp_path, caplog):
  images, labels = random_events(10, n=8)
  images[[1, 4, 6]] = 0.0  # no charge on any plane (their labelled pixels stay)
  images[5, 2] = 0.0  # one empty plane only: not an empty event
  path = write(tmp_path, images, labels)
  assert larcv.count_empty_events(path) == 3
  np.testing.assert_array_equal(larcv.empty_events(path), [1, 4, 6])
  np.testing.assert_array_equal(larcv.empty_events(path, start=2, stop=6), [4])
  stats = larcv.ReadStats()
  with caplog.at_level(logging.WARNING):
    events = larcv.read_cosmictagger(path, downsample=1, stats=stats)
  # The return type is unchanged: empty events are all-zero images.
  assert isinstance(events, lartpc.SbndEvents)
  np.testing.assert_array_equal(events.images, images)
  np.testing.assert_array_equal(events.labels, labels)
  assert (stats.path, stats.start, stats.stop, stats.num_events) == (path, 0, 8, 8)
  assert stats.num_empty == 3 and stats.empty_entries.tolist() == [1, 4, 6]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert warnings[0].startswith(f"{path}: 3 of 8 events (entries [0, 8)) have no image voxel")
  assert warnings[0].endswith("entries 1, 4, 6")

  caplog.clear()  # Iterating in chunks: one warning for the range read, before the first chunk.
  stats = larcv.ReadStats()
  with caplog.at_level(logging.WARNING):
    chunks = larcv.iter_cosmictagger(path, downsample=2, chunk_size=2, start=3, stop=7,
                                     stats=stats)
    next(chunks)
    assert stats.empty_entries.tolist() == [4, 6] and stats.num_events == 4
    rest = list(chunks)
  assert len(rest) == 1
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "2 of 4 events (entries [3, 7))" in warnings[0]

  caplog.clear()  # Many empty events: the first five are listed.
  images[:] = 0.0
  many = write(tmp_path, images, labels, name="many.h5")
  with caplog.at_level(logging.WARNING):
    larcv.read_cosmictagger(many, downsample=2)
  (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert "many.h5: 8 of 8 events" in message and message.endswith("entries 0, 1, 2, 3, 4, ...")

  caplog.clear()  # No empty event: no warning, a count of 0.
  full = write(tmp_path, *random_events(11, n=3), name="full.h5")
  stats = larcv.ReadStats()
  with caplog.at_level(logging.WARNING):
    larcv.read_cosmictagger(full, downsample=2, stats=stats)
  assert stats.num_empty == 0 and larcv.count_empty_events(full) == 0
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_hand_built_event_without_projections_is_empty(tmp_path):
  path = os.fspath(tmp_path / "hand.h5")
  _old_layout_file(path)  # event 1 has no projection at all
  np.testing.assert_array_equal(larcv.empty_events(path), [1])


def _rechunk_voxels(path, producer, rows_per_chunk):
  """Rewrites a producer's voxels in small gzip chunks (so a damaged chunk hits few events)."""
  with h5py.File(path, "r+") as f:
    g = f[larcv.group_path(producer)]
    data = g["voxels"][:]
    del g["voxels"]
    g.create_dataset("voxels", data=data, chunks=(rows_per_chunk,), compression="gzip")


def test_corrupted_or_truncated_hdf5_names_the_file(tmp_path):
  images, labels = random_events(12, n=6, ticks=16, wires=24)
  good = write(tmp_path, images, labels, name="good.h5")
  data = open(good, "rb").read()
  for fraction in (0.02, 0.3, 0.7, 0.99):
    path = tmp_path / f"truncated_{int(fraction * 100)}.h5"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match=rf"{path.name}: cannot open as HDF5: .*truncated") as info:
      larcv.read_cosmictagger(path)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError, match=rf"{path.name}: cannot open as HDF5"):
      larcv.count_empty_events(path)
  with pytest.raises(FileNotFoundError, match=r"missing\.h5"):
    larcv.read_cosmictagger(tmp_path / "missing.h5")

  # Garbage inside one compressed chunk of the image voxels: the chunk's first event is named.
  path = os.fspath(tmp_path / "garbled.h5")
  larcv.write_cosmictagger(path, images, labels)
  _rechunk_voxels(path, "sbndwire", 16)
  with h5py.File(path) as f:
    g = f[larcv.group_path("sbndwire")]
    chunk = g["voxels"].id.get_chunk_info(2)  # voxel rows [32, 48)
    vext = g["voxel_extents"][:]
  ends = vext["first"].astype(np.int64) + vext["N"].astype(np.int64)
  first_event = int(np.flatnonzero(ends > 32)[0]) // 3  # 3 projections per event
  content = bytearray(open(path, "rb").read())
  middle = chunk.byte_offset + chunk.size // 2
  content[middle:middle + 8] = b"\xff" * 8
  with open(path, "wb") as f:
    f.write(bytes(content))
  with pytest.raises(ValueError, match=rf"garbled\.h5: /Data/sparse2d_sbndwire_group/voxels: "
                     rf"event {first_event}: rows \[\d+, \d+\): cannot read: the file is "
                     r"corrupted or truncated \(OSError: ") as info:
    larcv.read_cosmictagger(path, downsample=1)
  assert isinstance(info.value.__cause__, OSError)
  # Counting empty events reads only the extents: still possible.
  assert larcv.count_empty_events(path) == 0

  # Garbage anywhere: either the file still reads, or a ValueError names it.
  for offset in range(0, len(data), 509):
    damaged = bytearray(data)
    damaged[offset:offset + 16] = b"\xa5" * 16
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(damaged))
    try:
      larcv.read_cosmictagger(path, downsample=1)
    except ValueError as e:
      assert str(e).startswith(f"{path}: "), (offset, str(e))


# ------------------------------------------------------------------ truth groups, per-axis


def _truth(n):
  """particle_sbndneutrino input: event 1 has no neutrino (cosmic only)."""
  return {"pdg": np.array([14, 0, -12, 14, 16])[:n],
          "current_type": np.array([0, -1, 0, 1, 0])[:n],
          "interaction_mode": np.array([1001, -1, 1091, 1002, 1001])[:n],
          "energy_gev": np.array([0.8, 0.0, 1.7, 0.4, 3.0])[:n],
          "vertex_cm": np.array([[-50.0, 10.0, 200.0], [np.nan] * 3, [120.0, -30.0, 400.0],
                                 [3.0, 4.0, 5.0], [1.0, 1.0, 1.0]])[:n]}


def test_interaction_codes_from_particle_truth():
  t = _truth(5)
  codes = larcv.interaction_codes(t["pdg"] != 0, t["pdg"], t["current_type"])
  # νμ CC, cosmic only, ν̄e CC, NC, ντ CC (not a class of the study: unknown).
  assert codes.tolist() == [2, 0, 1, 3, -1]
  assert [lartpc.INTERACTIONS[c] for c in codes[:4]] == ["numu_cc", "cosmic_only", "nue_cc",
                                                         "nc"]


def test_truth_groups_round_trip(tmp_path):
  """particle_sbndneutrino, cluster2d_sbndneutrino and cluster2d_sbndsegmerged are written
  in the larcv3 layout (checked field by field) and read back."""
  images, labels = random_events(1, n=5, ticks=12, wires=16)
  truth = _truth(5)
  vertex = np.full((5, 3, 2), np.nan)
  vertex[0] = [[3.2, 4.9], [5.0, 5.0], [0.4, 15.9]]  # The last is clipped at the corner.
  vertex[2] = [[6.0, 8.0], [6.0, 8.0], [np.nan, np.nan]]  # Plane Y without marker.
  segments = larcv.segments_from_labels(images, labels)
  ids = np.array([[1, 2, 3], [1, 2, 4], [1, 2, 5], [1, 3, 1], [1, 3, 2]])
  path = write(tmp_path, images, labels, event_ids=ids, neutrino=truth, vertex_pixels=vertex,
               segments=segments)
  with h5py.File(path) as f:
    g = f["/Data/particle_sbndneutrino_group"]
    assert g["particles"].dtype.itemsize == 344 and g["particles"].shape == (4,)
    assert g["extents"]["N"].tolist() == [1, 0, 1, 1, 1]
    assert g["particles"]["vtx"]["z"][0] == 200.0
    c = f["/Data/cluster2d_sbndneutrino_group"]
    assert set(c) == {"extents", "projection_extents", "image_meta", "cluster_extents",
                      "voxels"}
    assert c["extents"]["N"].tolist() == [3, 0, 3, 0, 0]
    assert c["cluster_extents"]["N"][:3].tolist() == [25, 25, 9]  # 5x5, 5x5, clipped 3x3.
  truth_read = larcv.read_neutrino_truth(path)
  assert truth_read.has_neutrino.tolist() == [True, False, True, True, True]
  assert truth_read.num_particles.tolist() == [1, 0, 1, 1, 1]
  events = larcv.read_cosmictagger(path, downsample=1)
  np.testing.assert_array_equal(events.images, images)
  assert events.interaction.tolist() == [2, 0, 1, 3, -1]
  np.testing.assert_allclose(events.neutrino_energy_gev, truth["energy_gev"], rtol=1e-6)
  assert events.neutrino_pdg.tolist() == truth["pdg"].tolist()
  assert events.current_type.tolist() == [0, -1, 0, 1, 0]
  assert events.interaction_mode.tolist() == truth["interaction_mode"].tolist()
  np.testing.assert_allclose(events.vertex_cm, truth["vertex_cm"], rtol=1e-6)
  np.testing.assert_array_equal(events.event_id, ids)
  np.testing.assert_array_equal(events.entry, np.arange(5))
  # Marker centres: the 5x5 block's centre (floor + 0.5); clipped blocks shift.
  np.testing.assert_allclose(events.vertex_pixel[0, :2], [[3.5, 4.5], [5.5, 5.5]])
  np.testing.assert_allclose(events.vertex_pixel[0, 2], [1.5, 14.5])
  assert np.isnan(events.vertex_pixel[1]).all() and np.isnan(events.vertex_pixel[2, 2]).all()
  # Pooled 2x4 (rows, columns): marker centres in pooled pixels.
  pooled = larcv.read_cosmictagger(path, downsample=(2, 4))
  np.testing.assert_allclose(pooled.vertex_pixel[0, 0], [3.5 / 2, 4.5 / 4])
  # Per-origin segment clusters: cluster 0 = neutrino pixels, 1 = cosmic, with values.
  clusters = larcv.read_clusters(path)
  for i in range(5):
    for p in range(3):
      cids, vids, values = clusters[i][p]
      dense = np.full((12, 16), -1)
      wire, time = np.divmod(vids.astype(np.int64), 12)
      dense[time, wire] = cids
      np.testing.assert_array_equal(dense, segments[0][i, p])
      np.testing.assert_array_equal(values, images[i, p][time, wire])
  # Files without the groups: unknown truth, as before.
  plain = larcv.read_cosmictagger(write(tmp_path, images, labels, "plain.h5"), downsample=1)
  assert plain.interaction.tolist() == [-1] * 5 and np.isnan(plain.neutrino_energy_gev).all()
  assert larcv.read_neutrino_truth(os.path.join(tmp_path, "plain.h5")) is None


def test_per_axis_downsampling_and_target_size(tmp_path):
  images, labels = random_events(2, n=2, ticks=20, wires=16)
  path = write(tmp_path, images, labels)
  for factors in ((5, 4), (2, 8), (20, 1)):
    events = larcv.read_cosmictagger(path, downsample=factors)
    np.testing.assert_allclose(events.images, larcv.downsample_images(images, factors),
                               rtol=1e-6)
    np.testing.assert_array_equal(events.labels, larcv.downsample_labels(labels, factors))
    by_size = larcv.read_cosmictagger(path, size=(20 // factors[0], 16 // factors[1]))
    np.testing.assert_array_equal(by_size.images, events.images)
  # Loop reference of a non-square block.
  fr, fc = 5, 4
  ref = np.array([[[[images[i, p, r * fr:(r + 1) * fr, c * fc:(c + 1) * fc].astype(
      np.float64).sum() / (fr * fc) for c in range(4)] for r in range(4)] for p in range(3)]
      for i in range(2)], np.float32)
  np.testing.assert_allclose(larcv.read_cosmictagger(path, downsample=(5, 4)).images, ref,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="cannot be pooled to 6x16"):
    larcv.read_cosmictagger(path, size=(6, 16))
  with pytest.raises(ValueError, match="not divisible by downsample"):
    larcv.read_cosmictagger(path, downsample=(3, 4))
  with pytest.raises(ValueError, match="downsample must be"):
    larcv.read_cosmictagger(path, downsample=(0, 4))
