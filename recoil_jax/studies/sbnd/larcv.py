"""Reader and fixture writer for the CosmicTagger public dataset (larcv3 HDF5), with h5py only.

The dataset of the SBND cosmic-tagging paper (arXiv 2012.01301, its dataset description;
data format and loader: github.com/coreyjadams/CosmicTagger).

Layout of a larcv3 file (checked against ``DeepLearnPhysics/larcv3``:
``src/larcv3/core/dataformat/IOManager.cxx``, ``EventSparseTensor.cxx``,
``DataFormatTypes.cxx``, ``ImageMeta.h``, ``Voxel.h``, ``EventID.h``)::

  /Events/event_id                 compound {run, subrun, event: int64}, one row per event
  /Data/sparse2d_<producer>_group/ one group per (product "sparse2d", producer) pair
      extents        {first: uint64, N: uint32}              one row per event -> voxel_extents
      voxel_extents  {first: uint64, N: uint32, ID: uint32}  one row per projection -> voxels
      image_meta     {valid: bool, projection_id: uint64, image_sizes: float64[2],
                      number_of_voxels: uint64[2], origin: float64[2]}  one row per projection
      voxels         {id: uint64, value: float32}            zero-suppressed pixels

The group name is ``"/Data/" + product + "_" + producer + "_group"``
(``IOManager::register_producer``). Rows of ``extents`` point into ``voxel_extents`` and
``image_meta`` (one row each per projection, in step); rows of ``voxel_extents`` point
into ``voxels``. Older larcv3 releases stored ``first`` as uint32 and ordered the
``IDExtents`` fields (first, ID, N); the reader finds fields by name and accepts any
integer width, the writer uses the newest layout (offsets and item sizes of the C structs).

CosmicTagger (``coreyjadams/CosmicTagger``: ``src/utils/core/larcvio/larcv_fetcher.py``,
``data_transforms.py``, ``larcv_scripts/preprocess*.cfg``): producers ``sbndwire`` (image,
ADC-like wire signal) and ``sbnd_cosmicseg`` (labels, stored at the image's voxels via
``ReferenceTensor2D``, values 0 background, 1 cosmic, 2 neutrino); projections 0, 1, 2 =
planes U, V (induction), Y (collection); ``number_of_voxels = [2048, 1280]`` = (wires,
drift ticks). An ImageMeta index is row-major with the last axis fastest
(``ImageMeta::index``), so ``wire = id // 1280`` and ``time = id % 1280``. The fetcher's
dense layout is ``[B, plane, y = time, x = wire]``: rows are drift time, columns wires,
the orientation of ``recoil_jax.studies.sbnd.sim`` (``images[N, 3, H, W]``).

Downsampling (``Downsample`` preprocess, ``SparseTensor::compress`` in ``Voxel.cxx``): the
image is average-pooled as sum / factor² (empty pixels count as zero), the labels
max-pooled; both axes by the same factor: 2048 x 1280 -> 1024 x 640 for the paper.

Threshold: the paper's dataset description (arXiv 2012.01301) has pixel values thresholded
at >= 5; the CosmicTagger pipeline itself applies none (``Tensor2DFromImage2D``
``Thresholds: [0,0,0]``; the fetcher calls ``larcvsparse_to_dense_2d`` without its
``threshold``, which caps values from above anyway). So ``threshold`` defaults to None
(the files as the paper's network saw them); with a value, full-resolution image voxels
below it are zeroed before pooling (as ``VoxelSet::threshold_min``), labels are kept.

Empty events (no image voxel on any plane) are read as all-zero images, as CosmicTagger
does; the reader counts them per file and logs a warning naming the file, the count and
the first entries (:func:`empty_events`, :func:`count_empty_events`, :class:`ReadStats`).

Errors: a malformed or corrupted file raises ``ValueError`` naming the file, the
group/dataset, the event (when known) and the problem; a low-level HDF5 error (truncated
file, a chunk failing its filter) is kept as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Iterator, Sequence

from absl import logging
import h5py
import numpy as np

from recoil_jax.studies.sbnd import sim as lartpc

IMAGE_PRODUCER = "sbndwire"
LABEL_PRODUCER = "sbnd_cosmicseg"
NUM_PLANES = 3
NUM_CLASSES = 3
# number_of_voxels of one CosmicTagger projection: (wires, drift ticks).
FULL_NUMBER_OF_VOXELS = (2048, 1280)
EVENT_ID_PATH = "/Events/event_id"

# The newest larcv3 layout (C struct offsets; see the module docstring).
EXTENTS_DTYPE = np.dtype({"names": ["first", "N"], "formats": ["<u8", "<u4"],
                          "offsets": [0, 8], "itemsize": 16})
ID_EXTENTS_DTYPE = np.dtype({"names": ["first", "N", "ID"], "formats": ["<u8", "<u4", "<u4"],
                             "offsets": [0, 8, 12], "itemsize": 16})
IMAGE_META_DTYPE = np.dtype({
    "names": ["valid", "projection_id", "image_sizes", "number_of_voxels", "origin"],
    "formats": ["u1", "<u8", ("<f8", (2,)), ("<u8", (2,)), ("<f8", (2,))],
    "offsets": [0, 8, 16, 32, 48], "itemsize": 72})
VOXEL_DTYPE = np.dtype({"names": ["id", "value"], "formats": ["<u8", "<f4"],
                        "offsets": [0, 8], "itemsize": 16})
EVENT_ID_DTYPE = np.dtype([("run", "<i8"), ("subrun", "<i8"), ("event", "<i8")])

# Required fields per dataset: name -> (allowed numpy kinds, shape of the field).
_INT = "iu"
_REQUIRED = {
    "extents": {"first": (_INT, ()), "N": (_INT, ())},
    "voxel_extents": {"first": (_INT, ()), "N": (_INT, ()), "ID": (_INT, ())},
    "image_meta": {"projection_id": (_INT, ()), "number_of_voxels": (_INT, (2,))},
    "voxels": {"id": (_INT, ()), "value": ("f", ())},
}
_EVENT_ID_FIELDS = {"run": (_INT, ()), "subrun": (_INT, ()), "event": (_INT, ())}
# Empty events listed in the warning.
_SHOWN_EMPTY = 5
# What h5py raises for a damaged file (a chunk failing its filter, a broken B-tree/header).
_H5_ERRORS = (OSError, RuntimeError, KeyError)


@dataclasses.dataclass
class ReadStats:
  """Per-file counts of :func:`iter_cosmictagger` / :func:`read_cosmictagger` (``stats=``).

  Filled before the first chunk is yielded, for the event range read.

  Attributes:
    path: the image file.
    start, stop: the entry range read.
    empty_entries: int64 entry indices (rows of ``/Events/event_id``) of the events with no
      image voxel on any plane (read as all-zero images).
  """
  path: str = ""
  start: int = 0
  stop: int = 0
  empty_entries: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int64))

  @property
  def num_events(self) -> int:
    return self.stop - self.start

  @property
  def num_empty(self) -> int:
    return int(self.empty_entries.size)


def _describe(e: BaseException) -> str:
  """``Type: message`` of a low-level error, on one line."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _h5_errors(where: str):
  """Low-level HDF5 read errors inside become a ValueError naming ``where``."""
  try:
    yield
  except _H5_ERRORS as e:
    raise ValueError(f"{where}: cannot read: the file is corrupted or truncated "
                     f"({_describe(e)})") from e


def group_path(producer: str, product: str = "sparse2d") -> str:
  """HDF5 path of a larcv3 product group, e.g. ``/Data/sparse2d_sbndwire_group``."""
  return f"/Data/{product}_{producer}_group"


# -- dense reference operations -------------------------------------------------------------

def downsample_images(images: np.ndarray, factor: int) -> np.ndarray:
  """Average pooling over ``factor`` x ``factor`` blocks of the last two axes (dense reference).

  Args:
    images: float [..., H, W]; H and W divisible by ``factor``.
    factor: pooling factor (1: a float32 copy).

  Returns:
    float32 [..., H / factor, W / factor], block sums / factor² in float64, then cast.
  """
  images = np.asarray(images)
  h, w = images.shape[-2:]
  if h % factor or w % factor:
    raise ValueError(f"image size {h}x{w} is not divisible by the downsample factor {factor}")
  blocks = images.reshape(images.shape[:-2] + (h // factor, factor, w // factor, factor))
  return blocks.astype(np.float64).mean(axis=(-3, -1)).astype(np.float32)


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
  """Max pooling over ``factor`` x ``factor`` blocks of the last two axes (dense reference).

  Args:
    labels: integer [..., H, W]; H and W divisible by ``factor``.
    factor: pooling factor (1: a uint8 copy).

  Returns:
    uint8 [..., H / factor, W / factor]: neutrino (2) wins over cosmic (1) over background.
  """
  labels = np.asarray(labels)
  h, w = labels.shape[-2:]
  if h % factor or w % factor:
    raise ValueError(f"label size {h}x{w} is not divisible by the downsample factor {factor}")
  blocks = labels.reshape(labels.shape[:-2] + (h // factor, factor, w // factor, factor))
  return blocks.max(axis=(-3, -1)).astype(np.uint8)


# -- reading ---------------------------------------------------------------------------------

class _Producer:
  """The four datasets of one sparse2d producer group, validated for layout."""

  def __init__(self, f: h5py.File, path: str, producer: str):
    self.path = path
    self.group = group_path(producer)
    with _h5_errors(f"{path}: {self.group}"):
      if self.group not in f:
        raise ValueError(f"{path}: missing group {self.group} (not a CosmicTagger larcv3 file, "
                         f"or no {producer!r} producer)")
      g = f[self.group]
      self.datasets = {}
      for name, fields in _REQUIRED.items():
        self.datasets[name] = _checked_dataset(g, name, fields, f"{path}: {self.group}/{name}")
    self.num_events = self.datasets["extents"].shape[0]

  def where(self, dataset: str, event: int | None = None) -> str:
    loc = f"{self.path}: {self.group}/{dataset}"
    return loc if event is None else f"{loc}: event {event}"

  def rows(self, dataset: str, lo: int, hi: int, event: int | None = None) -> np.ndarray:
    """Rows [lo, hi) of a dataset; a damaged file raises ValueError naming rows and event."""
    where = self.where(dataset, event)
    with _h5_errors(f"{where}: rows [{lo}, {hi})"):
      return self.datasets[dataset][lo:hi]

  def extents(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, N) int64 of events [lo, hi): their rows of voxel_extents, bounds checked."""
    ext = self.rows("extents", lo, hi, f"{lo}..{hi - 1}" if hi - lo > 1 else lo)
    ext_first = ext["first"].astype(np.int64)
    ext_n = ext["N"].astype(np.int64)
    n_vext = self.datasets["voxel_extents"].shape[0]
    bad = np.flatnonzero((ext_first < 0) | (ext_n < 0) | (ext_first + ext_n > n_vext))
    if bad.size:
      e = lo + int(bad[0])
      raise ValueError(f"{self.where('extents', e)}: rows [{ext_first[bad[0]]}, "
                       f"{ext_first[bad[0]] + ext_n[bad[0]]}) outside voxel_extents "
                       f"({n_vext} rows)")
    return ext_first, ext_n

  def voxels_per_event(self, lo: int, hi: int) -> np.ndarray:
    """int64 [hi - lo]: voxels of each event of [lo, hi), all projections together."""
    ext_first, ext_n = self.extents(lo, hi)
    counts = np.zeros(hi - lo, np.int64)
    rows = ext_n > 0
    if rows.any():
      r0 = int(ext_first[rows].min())
      r1 = int((ext_first + ext_n)[rows].max())
      n = self.rows("voxel_extents", r0, r1, f"{lo}..{hi - 1}")["N"].astype(np.int64)
      cumulative = np.concatenate([[0], np.cumsum(n)])
      a = np.where(rows, ext_first - r0, 0)
      counts = np.where(rows, cumulative[a + ext_n] - cumulative[a], 0)
    return counts

  def read(self, lo: int, hi: int, num_voxels: tuple[int, int]) -> list[dict]:
    """Per event of [lo, hi): {projection id: (voxel ids uint64, values float32)}; every
    projection's number_of_voxels must equal ``num_voxels``."""
    ext_first, ext_n = self.extents(lo, hi)
    n_vext = self.datasets["voxel_extents"].shape[0]
    if self.datasets["image_meta"].shape[0] != n_vext:
      raise ValueError(f"{self.where('image_meta')}: {self.datasets['image_meta'].shape[0]} "
                       f"rows, voxel_extents has {n_vext} (one per projection expected)")
    events = [dict() for _ in range(hi - lo)]
    rows = ext_n > 0
    if not rows.any():
      return events
    r0 = int(ext_first[rows].min())
    r1 = int((ext_first + ext_n)[rows].max())
    events_in = f"{lo}..{hi - 1}"
    vext = self.rows("voxel_extents", r0, r1, events_in)
    meta = self.rows("image_meta", r0, r1, events_in)
    v_first = vext["first"].astype(np.int64)
    v_n = vext["N"].astype(np.int64)
    n_vox = self.datasets["voxels"].shape[0]
    used = np.zeros(r1 - r0, bool)
    for k in range(hi - lo):
      used[ext_first[k] - r0:ext_first[k] + ext_n[k] - r0] = True
    v_lo = int(v_first[used].min()) if used.any() else 0
    v_hi = int((v_first + v_n)[used].max()) if used.any() else 0
    if v_lo < 0 or v_hi > n_vox:
      k = _event_of_bad_row(ext_first, ext_n, r0, (v_first < 0) | (v_first + v_n > n_vox))
      raise ValueError(f"{self.where('voxel_extents', lo + k)}: voxel rows outside voxels "
                       f"({n_vox} rows)")
    try:
      voxels = self.datasets["voxels"][v_lo:v_hi]
    except _H5_ERRORS as e:  # Name the first event whose voxels cannot be read.
      k = self._first_unreadable(ext_first, ext_n, r0, v_first, v_n)
      raise ValueError(f"{self.where('voxels', lo + k if k is not None else events_in)}: rows "
                       f"[{v_lo}, {v_hi}): cannot read: the file is corrupted or truncated "
                       f"({_describe(e)})") from e
    ids_all = voxels["id"]
    values_all = voxels["value"].astype(np.float32)
    for k in range(hi - lo):
      e = lo + k
      for r in range(ext_first[k] - r0, ext_first[k] + ext_n[k] - r0):
        pid = int(vext["ID"][r])
        if not 0 <= pid < NUM_PLANES:
          raise ValueError(f"{self.where('voxel_extents', e)}: projection id {pid} not in "
                           f"0..{NUM_PLANES - 1}")
        if pid in events[k]:
          raise ValueError(f"{self.where('voxel_extents', e)}: projection {pid} appears twice")
        if int(meta["projection_id"][r]) != pid:
          raise ValueError(f"{self.where('image_meta', e)}: projection_id "
                           f"{int(meta['projection_id'][r])} but voxel_extents ID {pid}")
        dims = tuple(int(d) for d in meta["number_of_voxels"][r])
        if dims != num_voxels:
          raise ValueError(f"{self.where('image_meta', e)}: projection {pid} has "
                           f"number_of_voxels {list(dims)}, expected {list(num_voxels)}")
        a = int(v_first[r]) - v_lo
        ids = ids_all[a:a + int(v_n[r])].astype(np.uint64)
        values = values_all[a:a + int(v_n[r])]
        total = num_voxels[0] * num_voxels[1]
        if ids.size and int(ids.max()) >= total:
          raise ValueError(f"{self.where('voxels', e)}: projection {pid}: voxel id "
                           f"{int(ids.max())} out of range for number_of_voxels "
                           f"{list(num_voxels)} ({total} pixels)")
        if not np.isfinite(values).all():
          raise ValueError(f"{self.where('voxels', e)}: projection {pid}: non-finite value")
        # larcv3 voxel sets are sorted by id: strictly increasing is the fast no-duplicate test.
        if (ids.size > 1 and not (ids[1:] > ids[:-1]).all()
            and (np.diff(np.sort(ids)) == 0).any()):
          raise ValueError(f"{self.where('voxels', e)}: projection {pid}: duplicate voxel ids")
        events[k][pid] = (ids, values)
    return events


  def _first_unreadable(self, ext_first, ext_n, r0, v_first, v_n) -> int | None:
    """Index in the chunk of the first event whose voxel rows cannot be read, or None."""
    for k in range(len(ext_first)):
      for r in range(ext_first[k] - r0, ext_first[k] + ext_n[k] - r0):
        try:
          self.datasets["voxels"][int(v_first[r]):int(v_first[r] + v_n[r])]
        except _H5_ERRORS:
          return k
    return None


def _event_of_bad_row(ext_first, ext_n, r0, bad_rows) -> int:
  for k in range(len(ext_first)):
    if bad_rows[ext_first[k] - r0:ext_first[k] + ext_n[k] - r0].any():
      return k
  return 0


def _checked_dataset(g: h5py.Group, name: str, fields, where: str) -> h5py.Dataset:
  if name not in g or not isinstance(g[name], h5py.Dataset):
    raise ValueError(f"{where}: missing dataset")
  ds = g[name]
  if ds.ndim != 1 or ds.dtype.names is None:
    raise ValueError(f"{where}: expected a 1-D compound dataset, got shape {ds.shape} dtype "
                     f"{ds.dtype}")
  for field, (kinds, shape) in fields.items():
    if field not in ds.dtype.names:
      raise ValueError(f"{where}: dtype {ds.dtype} has no field {field!r}")
    ft = ds.dtype.fields[field][0]
    base, fshape = (ft.subdtype if ft.subdtype else (ft, ()))
    if base.kind not in kinds or tuple(fshape) != shape:
      raise ValueError(f"{where}: field {field!r} has dtype {ft}, expected kind "
                       f"{'integer' if kinds == _INT else 'float'} with shape {shape}")
  return ds


def _num_events_of(f: h5py.File, path: str) -> int:
  with _h5_errors(f"{path}: {EVENT_ID_PATH}"):
    if EVENT_ID_PATH not in f:
      raise ValueError(f"{path}: missing dataset {EVENT_ID_PATH} (not a larcv3 file)")
    ds = _checked_dataset(f["/Events"], "event_id", _EVENT_ID_FIELDS,
                          f"{path}: {EVENT_ID_PATH}")
    return int(ds.shape[0])


def num_events(path: str | os.PathLike) -> int:
  """Number of events of a larcv3 file (rows of ``/Events/event_id``)."""
  path = os.fspath(path)
  with _open(path) as f:
    return _num_events_of(f, path)


def _open(path: str) -> h5py.File:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    return h5py.File(path, "r")
  except _H5_ERRORS as e:
    raise ValueError(f"{path}: cannot open as HDF5: not an HDF5 file, or a truncated or "
                     f"corrupted one ({_describe(e)})") from e


def empty_events(path: str | os.PathLike, *, start: int = 0,
                 stop: int | None = None) -> np.ndarray:
  """Entry indices (int64, rows of ``/Events/event_id``) of the events of [start, stop)
  with no image (``sbndwire``) voxel on any plane. Reads only the extents, not the voxels."""
  path = os.fspath(path)
  with _open(path) as f:
    n = _num_events_of(f, path)
    img = _Producer(f, path, IMAGE_PRODUCER)
    stop = n if stop is None else min(int(stop), n)
    if not 0 <= start <= stop:
      raise ValueError(f"{path}: event range [{start}, {stop}) invalid for {n} events")
    if img.num_events < stop:
      raise ValueError(f"{img.where('extents')}: {img.num_events} events, {EVENT_ID_PATH} has {n}")
    return int(start) + np.flatnonzero(img.voxels_per_event(int(start), stop) == 0)


def count_empty_events(path: str | os.PathLike, *, start: int = 0,
                       stop: int | None = None) -> int:
  """Number of events of [start, stop) with no image voxel on any plane (:func:`empty_events`)."""
  return int(empty_events(path, start=start, stop=stop).size)


def _warn_empty(stats: ReadStats) -> None:
  if stats.num_empty:
    shown = ", ".join(str(int(e)) for e in stats.empty_entries[:_SHOWN_EMPTY])
    more = ", ..." if stats.num_empty > _SHOWN_EMPTY else ""
    logging.warning("%s: %d of %d events (entries [%d, %d)) have no image voxel on any plane "
                    "(empty events, read as all-zero images); entries %s%s", stats.path,
                    stats.num_empty, stats.num_events, stats.start, stats.stop, shown, more)


def _densify(event: dict, num_voxels: tuple[int, int], factor: int, *, image: bool,
             threshold: float | None, where: str) -> np.ndarray:
  """One event's planes, downsampled: float32 (image) or uint8 (labels) [3, T/f, W/f]."""
  n_wires, n_ticks = num_voxels
  h, w = n_ticks // factor, n_wires // factor
  out = np.zeros((NUM_PLANES, h * w), np.float32 if image else np.uint8)
  for pid, (ids, values) in event.items():
    ids = ids.astype(np.int64)  # < number of pixels: checked by the reader
    wire, time = np.divmod(ids, n_ticks)
    flat = (time // factor) * w + wire // factor
    if image:
      if threshold is not None:
        values = np.where(values >= threshold, values, np.float32(0))
      # Sum per block (float64) / factor²: larcv3's average, empty pixels counting as 0.
      sums = np.bincount(flat, weights=values.astype(np.float64), minlength=h * w)
      out[pid] = (sums / (factor * factor)).astype(np.float32)
    else:
      labels = values.astype(np.int64)
      bad = (labels != values) | (labels < 0) | (labels >= NUM_CLASSES)
      if bad.any():
        raise ValueError(f"{where}: projection {pid}: label value {values[bad][0]!r} not in "
                         "{0, 1, 2}")
      # Max over a block: write the 1s, then the 2s over them.
      out[pid, flat[labels == 1]] = 1
      out[pid, flat[labels == 2]] = 2
  return out.reshape(NUM_PLANES, h, w)


def iter_cosmictagger(path: str | os.PathLike, *, downsample: int = 2,
                      threshold: float | None = None, label_path: str | os.PathLike | None = None,
                      start: int = 0, stop: int | None = None, chunk_size: int = 32,
                      stats: ReadStats | None = None) -> Iterator[lartpc.SbndEvents]:
  """Reads a CosmicTagger file in chunks of events (bounded memory).

  Args:
    path: larcv3 HDF5 file with ``sparse2d`` producers ``sbndwire`` and (unless
      ``label_path``) ``sbnd_cosmicseg``.
    downsample: pooling factor of both axes (2: the paper's 1280 x 2048 -> 640 x 1024; 1:
      full resolution). The file's number_of_voxels must be divisible by it.
    threshold: full-resolution image values below it are zeroed before pooling; None: none.
    label_path: file holding ``sbnd_cosmicseg`` if not ``path`` (same number of events).
    start, stop: event range (``stop`` None: to the end).
    chunk_size: events read per HDF5 access.
    stats: optional :class:`ReadStats`, filled (path, range, empty events) before the first
      chunk is yielded. Empty events of the range are also logged (a warning).

  Yields:
    ``SbndEvents`` of up to ``chunk_size`` events: images float32 [n, 3, T/f, W/f]
    (plane, drift row, wire column), labels uint8 (same shape), interaction -1 (unknown),
    neutrino_energy_gev nan.

  Raises:
    ValueError: naming the file, group/dataset, event and problem, for a missing group,
      a wrong dtype, event counts that disagree, out-of-range voxel ids, label values not
      in {0, 1, 2}, inconsistent image metas, or a corrupted/truncated file (HDF5 error as
      ``__cause__``).
    FileNotFoundError: a file does not exist.
  """
  if int(downsample) < 1:
    raise ValueError(f"downsample must be >= 1, got {downsample}")
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  factor = int(downsample)
  path = os.fspath(path)
  lpath = os.fspath(label_path) if label_path is not None else path
  with _open(path) as f, (_open(lpath) if lpath != path else contextlib.nullcontext(f)) as lf:
    n = _num_events_of(f, path)
    img = _Producer(f, path, IMAGE_PRODUCER)
    lab = _Producer(lf, lpath, LABEL_PRODUCER)
    if img.num_events != n:
      raise ValueError(f"{img.where('extents')}: {img.num_events} events, {EVENT_ID_PATH} has {n}")
    if lpath != path:
      n_label_file = _num_events_of(lf, lpath)
      if n_label_file != n:
        raise ValueError(f"{lpath}: {EVENT_ID_PATH}: {n_label_file} events, the image file "
                         f"{path} has {n}")
    if lab.num_events != n:
      raise ValueError(f"{lab.where('extents')}: {lab.num_events} events, the image file "
                       f"{path} has {n}")
    stop = n if stop is None else min(int(stop), n)
    if not 0 <= start <= stop:
      raise ValueError(f"{path}: event range [{start}, {stop}) invalid for {n} events")
    # The image size: the first projection's (every projection is checked against it).
    num_voxels = FULL_NUMBER_OF_VOXELS  # only if no event has any projection
    for producer in (img, lab):
      if producer.datasets["image_meta"].shape[0]:
        meta0 = producer.datasets["image_meta"][0]
        num_voxels = tuple(int(d) for d in meta0["number_of_voxels"])
        break
    if num_voxels[0] % factor or num_voxels[1] % factor:
      raise ValueError(f"{img.where('image_meta')}: number_of_voxels {list(num_voxels)} "
                       f"not divisible by downsample={factor}")
    counted = ReadStats(path=path, start=int(start), stop=stop,
                        empty_entries=int(start) + np.flatnonzero(
                            img.voxels_per_event(int(start), stop) == 0))
    if stats is not None:
      stats.path, stats.start, stats.stop = counted.path, counted.start, counted.stop
      stats.empty_entries = counted.empty_entries
    _warn_empty(counted)
    for lo in range(int(start), stop, int(chunk_size)):
      hi = min(stop, lo + int(chunk_size))
      img_events = img.read(lo, hi, num_voxels)
      lab_events = lab.read(lo, hi, num_voxels)
      images = np.stack([
          _densify(ev, num_voxels, factor, image=True, threshold=threshold,
                   where=img.where("voxels", lo + k)) for k, ev in enumerate(img_events)])
      labels = np.stack([
          _densify(ev, num_voxels, factor, image=False, threshold=None,
                   where=lab.where("voxels", lo + k)) for k, ev in enumerate(lab_events)])
      m = hi - lo
      yield lartpc.SbndEvents(images=images, labels=labels,
                              interaction=np.full(m, -1, np.int32),
                              neutrino_energy_gev=np.full(m, np.nan, np.float32))


def read_cosmictagger(path: str | os.PathLike, *, downsample: int = 2,
                      max_events: int | None = None, threshold: float | None = None,
                      label_path: str | os.PathLike | None = None,
                      start: int = 0, stats: ReadStats | None = None) -> lartpc.SbndEvents:
  """Reads (up to ``max_events``) events of a CosmicTagger file into memory.

  Dense arrays are large (7.9 MB per event at 640 x 1024): for whole files use
  :func:`iter_cosmictagger`. Arguments (``stats``: empty events) and errors as there.

  Returns:
    ``SbndEvents`` with images float32 [N, 3, T/f, W/f], labels uint8, interaction -1,
    neutrino_energy_gev nan (real files carry no truth here).
  """
  stop = None if max_events is None else int(start) + int(max_events)
  chunks = list(iter_cosmictagger(path, downsample=downsample, threshold=threshold,
                                  label_path=label_path, start=start, stop=stop,
                                  stats=stats))
  if not chunks:
    n_wires, n_ticks = FULL_NUMBER_OF_VOXELS
    shape = (0, NUM_PLANES, n_ticks // downsample, n_wires // downsample)
    return lartpc.SbndEvents(images=np.zeros(shape, np.float32), labels=np.zeros(shape, np.uint8),
                             interaction=np.zeros(0, np.int32),
                             neutrino_energy_gev=np.zeros(0, np.float32))
  return lartpc.SbndEvents(
      images=np.concatenate([c.images for c in chunks]),
      labels=np.concatenate([c.labels for c in chunks]),
      interaction=np.concatenate([c.interaction for c in chunks]),
      neutrino_energy_gev=np.concatenate([c.neutrino_energy_gev for c in chunks]))


# -- writing ---------------------------------------------------------------------------------

def _voxels_of(plane: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Voxels (id = wire * T + time, sorted) of a [T, W] plane where ``mask``."""
  time, wire = np.nonzero(mask)
  ids = wire.astype(np.uint64) * np.uint64(plane.shape[0]) + time.astype(np.uint64)
  order = np.argsort(ids, kind="stable")
  out = np.zeros(ids.size, VOXEL_DTYPE)
  out["id"] = ids[order]
  out["value"] = plane[time[order], wire[order]]
  return out


def _write_producer(f: h5py.File, producer: str, planes: Sequence[Sequence[np.ndarray]],
                    num_voxels: tuple[int, int], compression: int | None) -> None:
  g = f.create_group(group_path(producer))
  n_events = len(planes)
  extents = np.zeros(n_events, EXTENTS_DTYPE)
  vext = np.zeros(n_events * NUM_PLANES, ID_EXTENTS_DTYPE)
  meta = np.zeros(n_events * NUM_PLANES, IMAGE_META_DTYPE)
  counts = np.array([[v.size for v in ev] for ev in planes], np.int64).reshape(-1)
  firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
  extents["first"] = np.arange(n_events) * NUM_PLANES
  extents["N"] = NUM_PLANES
  vext["first"] = firsts
  vext["N"] = counts
  vext["ID"] = np.tile(np.arange(NUM_PLANES), n_events)
  meta["valid"] = 1
  meta["projection_id"] = vext["ID"]
  meta["number_of_voxels"] = num_voxels
  meta["image_sizes"] = num_voxels  # unit: wire / tick (kUnitWireTime)
  # Filled field by field: np.concatenate would repack the dtype without the C padding.
  voxels = np.zeros(int(counts.sum()), VOXEL_DTYPE)
  if voxels.size:
    for field in ("id", "value"):
      voxels[field] = np.concatenate([v[field] for ev in planes for v in ev])
  kw = dict(compression="gzip", compression_opts=int(compression)) if compression else {}
  for name, data in (("extents", extents), ("voxel_extents", vext), ("image_meta", meta),
                     ("voxels", voxels)):
    g.create_dataset(name, data=data, maxshape=(None,), chunks=True, **kw)


def write_cosmictagger(path: str | os.PathLike, images_full_res: np.ndarray,
                       labels_full_res: np.ndarray, *, event_ids: np.ndarray | None = None,
                       compression: int | None = 1) -> None:
  """Writes events in the CosmicTagger larcv3 layout (fixtures, conversions); atomic.

  Image voxels are the non-zero image pixels; label voxels are the image voxels (as
  ``ReferenceTensor2D`` makes them) plus any labelled pixel outside them, so images and
  labels read back exactly at ``downsample=1``.

  Args:
    path: output file; written to a temporary file in the same folder, then renamed.
    images_full_res: float [N, 3, T, W] (plane, drift tick, wire); number_of_voxels is
      stored as [W, T] (the dataset's [2048, 1280]).
    labels_full_res: integer [N, 3, T, W] in {0, 1, 2}.
    event_ids: optional int [N, 3] (run, subrun, event); default (0, 0, i).
    compression: gzip level of every dataset (larcv3 default 1); None: uncompressed.
  """
  path = os.fspath(path)
  images = np.asarray(images_full_res, np.float32)
  labels = np.asarray(labels_full_res)
  if images.ndim != 4 or images.shape[1] != NUM_PLANES:
    raise ValueError(f"images_full_res: expected [N, {NUM_PLANES}, T, W], got {images.shape}")
  if labels.shape != images.shape:
    raise ValueError(f"labels_full_res shape {labels.shape} != images shape {images.shape}")
  if not np.isin(labels, (0, 1, 2)).all():
    raise ValueError("labels_full_res: values must be 0, 1 or 2")
  if not np.isfinite(images).all():
    raise ValueError("images_full_res: non-finite values")
  n, _, n_ticks, n_wires = images.shape
  if event_ids is None:
    ids = np.zeros(n, EVENT_ID_DTYPE)
    ids["event"] = np.arange(n)
  else:
    event_ids = np.asarray(event_ids)
    if event_ids.shape != (n, 3):
      raise ValueError(f"event_ids: expected [{n}, 3] (run, subrun, event), got {event_ids.shape}")
    ids = np.zeros(n, EVENT_ID_DTYPE)
    ids["run"], ids["subrun"], ids["event"] = event_ids.T
  image_planes, label_planes = [], []
  for i in range(n):
    image_planes.append([_voxels_of(images[i, p], images[i, p] != 0) for p in range(NUM_PLANES)])
    label_planes.append([
        _voxels_of(labels[i, p].astype(np.float32), (images[i, p] != 0) | (labels[i, p] != 0))
        for p in range(NUM_PLANES)])
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=folder)
  os.close(fd)
  try:
    with h5py.File(tmp, "w") as f:
      f.create_group("/Events")
      f.create_group("/Data")
      kw = dict(compression="gzip", compression_opts=int(compression)) if compression else {}
      f.create_dataset(EVENT_ID_PATH, data=ids, maxshape=(None,), chunks=True, **kw)
      _write_producer(f, IMAGE_PRODUCER, image_planes, (n_wires, n_ticks), compression)
      _write_producer(f, LABEL_PRODUCER, label_planes, (n_wires, n_ticks), compression)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
