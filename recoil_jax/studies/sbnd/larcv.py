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

Truth groups (read when present, written by the fixture writer; supera code for the
dataset, ``coreyjadams`` ``supera_light`` / ``SBNDNeutrino``, and larcv3
``EventParticle.cxx``, ``EventSparseCluster.cxx``, ``Particle.h``)::

  /Data/particle_sbndneutrino_group/  extents {first, N} per event -> particles
      particles   larcv3::Particle (344 bytes: pdg, current_type, interaction_type,
                  energy_init [GeV], vtx {x, y, z, t} [cm], ...); the neutrino first, then
                  the generator's final-state particles; none for cosmic-only events
  /Data/cluster2d_<producer>_group/   extents {first, N} per event -> projection_extents
      projection_extents {first, N, ID}  one row per projection -> cluster_extents
      image_meta                         one row per projection (as sparse2d)
      cluster_extents    {first, N, ID}  one row per cluster (ID = cluster id) -> voxels
      voxels             {id, value}

``cluster2d_sbndneutrino`` holds per plane one cluster, a 5x5 block of value-1 voxels around
the vertex; ``cluster2d_sbndsegmerged`` one cluster per particle. Interaction classes from
the particle truth: :func:`interaction_codes` (the mapping of CosmicTagger's analysis code).

Downsampling (``Downsample`` preprocess, ``SparseTensor::compress`` in ``Voxel.cxx``): the
image is average-pooled as sum / factor² (empty pixels count as zero), the labels
max-pooled; both axes by the same factor: 2048 x 1280 -> 1024 x 640 for the paper. Here
the factors may differ per axis (``downsample=(rows, columns)`` or a target ``size``), e.g.
20 x 16 blocks for 64 x 128.

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
from typing import Iterator, Mapping, Sequence

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

# Truth producers of the CosmicTagger files: ``particle_sbndneutrino`` (the neutrino, then
# the generator's final-state particles; none for cosmic-only events),
# ``cluster2d_sbndneutrino`` (per plane one cluster: a 5x5 block of value-1 voxels around the
# vertex) and ``cluster2d_sbndsegmerged`` (per plane one cluster per particle, voxel value =
# deposited energy, the last cluster holding unassigned deposits).
NEUTRINO_PRODUCER = "sbndneutrino"
SEGMENT_PRODUCER = "sbndsegmerged"
VERTEX_MARKER_HALF_SIZE = 2  # the 5x5 marker block
# larcv3::Vertex {x, y, z, t: double} and larcv3::Particle (Particle.h, x86-64 offsets).
VERTEX_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("t", "<f8")])
PARTICLE_DTYPE = np.dtype({
    "names": ["id", "mcst_index", "mct_index", "shape", "current_type", "interaction_type",
              "trackid", "pdg", "px", "py", "pz", "vtx", "end_pt", "first_step", "last_step",
              "dist_travel", "energy_init", "energy_deposit", "process", "parent_trackid",
              "parent_pdg", "parent_vtx", "ancestor_trackid", "ancestor_pdg", "ancestor_vtx"],
    "formats": ["<u2", "<u2", "<u2", "<i4", "<i2", "<i2", "<u4", "<i4", "<f8", "<f8", "<f8",
                VERTEX_DTYPE, VERTEX_DTYPE, VERTEX_DTYPE, VERTEX_DTYPE, "<f8", "<f8", "<f8",
                "S64", "<u4", "<i4", VERTEX_DTYPE, "<u4", "<i4", VERTEX_DTYPE],
    "offsets": [0, 2, 4, 8, 12, 14, 16, 20, 24, 32, 40, 48, 80, 112, 144, 176, 184, 192, 200,
                264, 268, 272, 304, 308, 312],
    "itemsize": 344})
# PDG codes of the study's CC classes (either sign); current_type 0 CC, 1 NC.
NUE_PDG, NUMU_PDG = 12, 14

# Required fields per dataset: name -> (allowed numpy kinds, shape of the field).
_INT = "iu"
_REQUIRED = {
    "extents": {"first": (_INT, ()), "N": (_INT, ())},
    "voxel_extents": {"first": (_INT, ()), "N": (_INT, ()), "ID": (_INT, ())},
    "image_meta": {"projection_id": (_INT, ()), "number_of_voxels": (_INT, (2,))},
    "voxels": {"id": (_INT, ()), "value": ("f", ())},
}
_EVENT_ID_FIELDS = {"run": (_INT, ()), "subrun": (_INT, ()), "event": (_INT, ())}
_PARTICLE_FIELDS = {"pdg": (_INT, ()), "current_type": (_INT, ()),
                    "interaction_type": (_INT, ()), "energy_init": ("f", ())}
_CLUSTER_REQUIRED = {
    "extents": {"first": (_INT, ()), "N": (_INT, ())},
    "projection_extents": {"first": (_INT, ()), "N": (_INT, ()), "ID": (_INT, ())},
    "image_meta": {"projection_id": (_INT, ()), "number_of_voxels": (_INT, (2,))},
    "cluster_extents": {"first": (_INT, ()), "N": (_INT, ()), "ID": (_INT, ())},
    "voxels": {"id": (_INT, ()), "value": ("f", ())},
}
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

def factors_of(downsample: int | Sequence[int]) -> tuple[int, int]:
  """(rows, columns) pooling factors of ``downsample``: one int for both axes or a pair."""
  f = (downsample, downsample) if np.ndim(downsample) == 0 else tuple(downsample)
  if len(f) != 2 or any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in f):
    raise ValueError(f"downsample must be an integer >= 1 or a pair (rows, columns) of them, "
                     f"got {downsample!r}")
  return int(f[0]), int(f[1])


def _blocks(a: np.ndarray, downsample, what: str) -> np.ndarray:
  fr, fc = factors_of(downsample)
  h, w = a.shape[-2:]
  if h % fr or w % fc:
    raise ValueError(f"{what} size {h}x{w} is not divisible by the downsample factors "
                     f"{fr}x{fc}")
  return a.reshape(a.shape[:-2] + (h // fr, fr, w // fc, fc))


def downsample_images(images: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
  """Average pooling over blocks of the last two axes (dense reference).

  Args:
    images: float [..., H, W]; H, W divisible by the factors.
    factor: pooling factor of both axes, or (rows, columns) (1: a float32 copy).

  Returns:
    float32 [..., H / fr, W / fc], block sums / (fr·fc) in float64, then cast.
  """
  blocks = _blocks(np.asarray(images), factor, "image")
  return blocks.astype(np.float64).mean(axis=(-3, -1)).astype(np.float32)


def downsample_labels(labels: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
  """Max pooling over blocks of the last two axes (dense reference).

  Args:
    labels: integer [..., H, W]; H, W divisible by the factors.
    factor: pooling factor of both axes, or (rows, columns) (1: a uint8 copy).

  Returns:
    uint8 [..., H / fr, W / fc]: neutrino (2) wins over cosmic (1) over background.
  """
  return _blocks(np.asarray(labels), factor, "label").max(axis=(-3, -1)).astype(np.uint8)


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


def _densify(event: dict, num_voxels: tuple[int, int], factors: tuple[int, int], *,
             image: bool, threshold: float | None, where: str) -> np.ndarray:
  """One event's planes, downsampled: float32 (image) or uint8 (labels) [3, T/fr, W/fc]."""
  n_wires, n_ticks = num_voxels
  fr, fc = factors
  h, w = n_ticks // fr, n_wires // fc
  out = np.zeros((NUM_PLANES, h * w), np.float32 if image else np.uint8)
  for pid, (ids, values) in event.items():
    ids = ids.astype(np.int64)  # < number of pixels: checked by the reader
    wire, time = np.divmod(ids, n_ticks)
    flat = (time // fr) * w + wire // fc
    if image:
      if threshold is not None:
        values = np.where(values >= threshold, values, np.float32(0))
      # Sum per block (float64) / block size: larcv3's average, empty pixels counting as 0.
      sums = np.bincount(flat, weights=values.astype(np.float64), minlength=h * w)
      out[pid] = (sums / (fr * fc)).astype(np.float32)
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


# -- truth groups ----------------------------------------------------------------------------

@dataclasses.dataclass
class NeutrinoTruth:
  """The neutrino of each event of ``particle_sbndneutrino`` (events [start, stop)).

  The neutrino is the first particle of an event (as CosmicTagger's tools take it,
  ``as_vector().front()``); events without particles are cosmic-only. Units as LArSoft's
  ``simb::MCParticle``: energy GeV, vertex cm.

  Attributes:
    has_neutrino: bool [n].
    pdg: int32 [n], PDG code (0 without neutrino).
    current_type: int32 [n], 0 CC, 1 NC (``MCNeutrino::CCNC``); -1 without neutrino.
    interaction_mode: int32 [n], ``MCNeutrino::InteractionType`` (e.g. 1001 CCQE); -1 without.
    energy_gev: float32 [n], neutrino energy (0 without neutrino).
    vertex_cm: float32 [n, 3], (x, y, z) of the interaction; nan without neutrino.
    num_particles: int32 [n], particles of the event in the group (neutrino included).
  """
  has_neutrino: np.ndarray
  pdg: np.ndarray
  current_type: np.ndarray
  interaction_mode: np.ndarray
  energy_gev: np.ndarray
  vertex_cm: np.ndarray
  num_particles: np.ndarray

  def interaction(self) -> np.ndarray:
    """int32 [n] codes of ``sbnd.sim.INTERACTIONS`` (:func:`interaction_codes`)."""
    return interaction_codes(self.has_neutrino, self.pdg, self.current_type)


def interaction_codes(has_neutrino: np.ndarray, pdg: np.ndarray,
                      current_type: np.ndarray) -> np.ndarray:
  """The study's classes from particle truth: int32 [n] index into ``sim.INTERACTIONS``.

  No neutrino: cosmic_only (0); current_type 1: NC (3); CC with |pdg| 12: νe CC (1), 14: νμ
  CC (2) (antineutrinos with them, as CosmicTagger's analysis code does); any other
  neutrino (ντ CC, or an unknown current type): -1 (unknown).
  """
  has = np.asarray(has_neutrino, bool)
  apdg = np.abs(np.asarray(pdg, np.int64))
  cur = np.asarray(current_type, np.int64)
  out = np.full(has.shape, -1, np.int32)
  out[~has] = lartpc.INTERACTIONS.index("cosmic_only")
  out[has & (cur == 1)] = lartpc.INTERACTIONS.index("nc")
  out[has & (cur == 0) & (apdg == NUE_PDG)] = lartpc.INTERACTIONS.index("nue_cc")
  out[has & (cur == 0) & (apdg == NUMU_PDG)] = lartpc.INTERACTIONS.index("numu_cc")
  return out


def _checked_extents(f: h5py.File, path: str, group: str, lo: int, hi: int, target: str,
                     n_target: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, N) int64 of events [lo, hi) of ``group/extents``, bounds-checked against the
  ``n_target`` rows of ``group/target``."""
  ext = _checked_dataset(f[group], "extents", _REQUIRED["extents"], f"{path}: {group}/extents")
  if ext.shape[0] < hi:
    raise ValueError(f"{path}: {group}/extents: {ext.shape[0]} events, the file has at least "
                     f"{hi}")
  with _h5_errors(f"{path}: {group}/extents: rows [{lo}, {hi})"):
    rows = ext[lo:hi]
  first, n = rows["first"].astype(np.int64), rows["N"].astype(np.int64)
  bad = np.flatnonzero((first < 0) | (n < 0) | (first + n > n_target))
  if bad.size:
    k = int(bad[0])
    raise ValueError(f"{path}: {group}/extents: event {lo + k}: rows [{first[k]}, "
                     f"{first[k] + n[k]}) outside {target} ({n_target} rows)")
  return first, n


def _read_particles(f: h5py.File, path: str, lo: int, hi: int) -> NeutrinoTruth | None:
  """The neutrino truth of events [lo, hi), or None if the file has no such group."""
  group = group_path(NEUTRINO_PRODUCER, "particle")
  with _h5_errors(f"{path}: {group}"):
    if group not in f:
      return None
    parts = _checked_dataset(f[group], "particles", _PARTICLE_FIELDS,
                             f"{path}: {group}/particles")
    vtx = parts.dtype.fields.get("vtx", (None,))[0] if "vtx" in parts.dtype.names else None
    if vtx is None or vtx.names is None or not {"x", "y", "z"} <= set(vtx.names):
      raise ValueError(f"{path}: {group}/particles: dtype {parts.dtype} has no compound "
                       "field 'vtx' with x, y, z")
    first, n = _checked_extents(f, path, group, lo, hi, "particles", parts.shape[0])
    m = hi - lo
    truth = NeutrinoTruth(
        has_neutrino=n > 0, pdg=np.zeros(m, np.int32), current_type=np.full(m, -1, np.int32),
        interaction_mode=np.full(m, -1, np.int32), energy_gev=np.zeros(m, np.float32),
        vertex_cm=np.full((m, 3), np.nan, np.float32), num_particles=n.astype(np.int32))
    if truth.has_neutrino.any():
      r0 = int(first[n > 0].min())
      r1 = int(first[n > 0].max()) + 1
      with _h5_errors(f"{path}: {group}/particles: rows [{r0}, {r1})"):
        rows = parts[r0:r1][first[n > 0] - r0]  # The first particle of each event.
      has = truth.has_neutrino
      truth.pdg[has] = rows["pdg"]
      truth.current_type[has] = rows["current_type"]
      truth.interaction_mode[has] = rows["interaction_type"]
      truth.energy_gev[has] = rows["energy_init"]
      truth.vertex_cm[has] = np.stack([rows["vtx"][a] for a in "xyz"], axis=1)
    return truth


def read_neutrino_truth(path: str | os.PathLike, *, start: int = 0,
                        stop: int | None = None) -> NeutrinoTruth | None:
  """:class:`NeutrinoTruth` of events [start, stop) of a file; None without the group."""
  path = os.fspath(path)
  with _open(path) as f:
    n = _num_events_of(f, path)
    stop = n if stop is None else min(int(stop), n)
    return _read_particles(f, path, int(start), stop)


def _read_cluster2d(f: h5py.File, path: str, producer: str, lo: int, hi: int
                    ) -> tuple[list[dict], tuple[int, int] | None] | None:
  """Clusters of events [lo, hi) of ``cluster2d_<producer>``, or None without the group.

  Returns:
    (events, number_of_voxels): per event ``{projection id: (cluster ids int32 [n], voxel
    ids uint64 [n], values float32 [n])}`` and the projections' (wires, ticks) (None if no
    projection in the range).
  """
  group = group_path(producer, "cluster2d")
  with _h5_errors(f"{path}: {group}"):
    if group not in f:
      return None
    g = f[group]
    ds = {name: _checked_dataset(g, name, fields, f"{path}: {group}/{name}")
          for name, fields in _CLUSTER_REQUIRED.items()}
    n_proj = ds["projection_extents"].shape[0]
    if ds["image_meta"].shape[0] != n_proj:
      raise ValueError(f"{path}: {group}/image_meta: {ds['image_meta'].shape[0]} rows, "
                       f"projection_extents has {n_proj} (one per projection expected)")
    first, n = _checked_extents(f, path, group, lo, hi, "projection_extents", n_proj)
    events = [dict() for _ in range(hi - lo)]
    num_voxels = None
    if not (n > 0).any():
      return events, num_voxels
    p0, p1 = int(first[n > 0].min()), int((first + n)[n > 0].max())
    proj, meta = ds["projection_extents"][p0:p1], ds["image_meta"][p0:p1]
    c_first, c_n = proj["first"].astype(np.int64), proj["N"].astype(np.int64)
    n_clu = ds["cluster_extents"].shape[0]
    if ((c_first < 0) | (c_first + c_n > n_clu)).any():
      raise ValueError(f"{path}: {group}/projection_extents: rows outside cluster_extents "
                       f"({n_clu} rows)")
    c0, c1 = int(c_first.min()), int((c_first + c_n).max())
    clusters = ds["cluster_extents"][c0:c1]
    v_first, v_n = clusters["first"].astype(np.int64), clusters["N"].astype(np.int64)
    n_vox = ds["voxels"].shape[0]
    if ((v_first < 0) | (v_first + v_n > n_vox)).any():
      raise ValueError(f"{path}: {group}/cluster_extents: rows outside voxels ({n_vox} rows)")
    v0 = int(v_first.min()) if v_first.size else 0
    v1 = int((v_first + v_n).max()) if v_first.size else 0
    voxels = ds["voxels"][v0:v1]
    for k in range(hi - lo):
      for r in range(first[k] - p0, first[k] + n[k] - p0):
        pid = int(proj["ID"][r])
        dims = tuple(int(d) for d in meta["number_of_voxels"][r])
        if not 0 <= pid < NUM_PLANES or pid in events[k]:
          raise ValueError(f"{path}: {group}/projection_extents: event {lo + k}: projection "
                           f"id {pid} not in 0..{NUM_PLANES - 1} or repeated")
        if num_voxels is not None and dims != num_voxels:
          raise ValueError(f"{path}: {group}/image_meta: event {lo + k}: number_of_voxels "
                           f"{list(dims)}, other projections have {list(num_voxels)}")
        num_voxels = dims
        cids, ids, values = [], [], []
        for c in range(c_first[r] - c0, c_first[r] + c_n[r] - c0):
          a = int(v_first[c]) - v0
          ids.append(voxels["id"][a:a + int(v_n[c])].astype(np.uint64))
          values.append(voxels["value"][a:a + int(v_n[c])].astype(np.float32))
          cids.append(np.full(int(v_n[c]), int(clusters["ID"][c]), np.int32))
        cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
        ids_all = cat(ids, np.uint64)
        if ids_all.size and int(ids_all.max()) >= dims[0] * dims[1]:
          raise ValueError(f"{path}: {group}/voxels: event {lo + k}: projection {pid}: voxel "
                           f"id {int(ids_all.max())} out of range for {list(dims)}")
        events[k][pid] = (cat(cids, np.int32), ids_all, cat(values, np.float32))
    return events, num_voxels


def read_clusters(path: str | os.PathLike, producer: str = SEGMENT_PRODUCER, *,
                  start: int = 0, stop: int | None = None) -> list[dict] | None:
  """The ``cluster2d_<producer>`` clusters of events [start, stop); None without the group.

  Returns:
    Per event ``{projection id: (cluster ids int32 [n], voxel ids uint64 [n], values float32
    [n])}``, one entry per voxel (``wire = id // ticks``, ``time = id % ticks``, as images).
  """
  path = os.fspath(path)
  with _open(path) as f:
    n = _num_events_of(f, path)
    stop = n if stop is None else min(int(stop), n)
    out = _read_cluster2d(f, path, producer, int(start), stop)
    return None if out is None else out[0]


def _marker_pixels(events: list[dict], num_voxels, factors: tuple[int, int]) -> np.ndarray:
  """float32 [n, 3, 2]: per plane the mean (row, column) of the vertex-marker voxels in
  pixels of the downsampled image (pixel i covers [i, i + 1)); nan without voxels."""
  out = np.full((len(events), NUM_PLANES, 2), np.nan, np.float32)
  for k, ev in enumerate(events):
    for pid, (_, ids, _) in ev.items():
      if ids.size:
        wire, time = np.divmod(ids.astype(np.int64), num_voxels[1])
        out[k, pid] = ((time + 0.5).mean() / factors[0], (wire + 0.5).mean() / factors[1])
  return out


def _resolve_factors(num_voxels: tuple[int, int], downsample, size, where: str
                     ) -> tuple[int, int]:
  """(rows, columns) pooling factors from ``downsample`` or a target ``size`` (H, W)."""
  n_wires, n_ticks = num_voxels
  if size is not None:
    h, w = (int(v) for v in size)
    if h < 1 or w < 1 or n_ticks % h or n_wires % w:
      raise ValueError(f"{where}: number_of_voxels {list(num_voxels)} (wires, ticks) cannot be "
                       f"pooled to {h}x{w} (rows x columns): {n_ticks} ticks and {n_wires} "
                       "wires must be integer multiples of it")
    return n_ticks // h, n_wires // w
  fr, fc = factors_of(downsample)
  if n_ticks % fr or n_wires % fc:
    raise ValueError(f"{where}: number_of_voxels {list(num_voxels)} not divisible by "
                     f"downsample={downsample} (rows x columns {fr}x{fc})")
  return fr, fc


def iter_cosmictagger(path: str | os.PathLike, *, downsample: int | Sequence[int] = 2,
                      size: Sequence[int] | None = None,
                      threshold: float | None = None, label_path: str | os.PathLike | None = None,
                      start: int = 0, stop: int | None = None, chunk_size: int = 32,
                      stats: ReadStats | None = None) -> Iterator[lartpc.SbndEvents]:
  """Reads a CosmicTagger file in chunks of events (bounded memory).

  Args:
    path: larcv3 HDF5 file with ``sparse2d`` producers ``sbndwire`` and (unless
      ``label_path``) ``sbnd_cosmicseg``; optionally the truth groups
      ``particle_sbndneutrino`` and ``cluster2d_sbndneutrino`` (in either file).
    downsample: pooling factor of both axes (2: the paper's 1280 x 2048 -> 640 x 1024; 1:
      full resolution) or (rows, columns), e.g. (20, 16) for 64 x 128. The file's
      number_of_voxels must be divisible by it.
    size: instead of ``downsample``, the target (height, width) (rows, wire columns): the
      factors are the file's size over it (exact multiples required).
    threshold: full-resolution image values below it are zeroed before pooling; None: none.
    label_path: file holding ``sbnd_cosmicseg`` if not ``path`` (same number of events).
    start, stop: event range (``stop`` None: to the end).
    chunk_size: events read per HDF5 access.
    stats: optional :class:`ReadStats`, filled (path, range, empty events) before the first
      chunk is yielded. Empty events of the range are also logged (a warning).

  Yields:
    ``SbndEvents`` of up to ``chunk_size`` events: images float32 [n, 3, T/fr, W/fc]
    (plane, drift row, wire column), labels uint8 (same shape), ``entry`` (row in the file)
    and ``event_id`` (run, subrun, event). With ``particle_sbndneutrino``: interaction
    (:func:`interaction_codes`), neutrino energy (GeV; 0 for cosmic-only), PDG code,
    current type, interaction mode, vertex (cm); without: interaction -1, energy nan.
    With ``cluster2d_sbndneutrino``: ``vertex_pixel`` (the marker's centre per plane).

  Raises:
    ValueError: naming the file, group/dataset, event and problem, for a missing group,
      a wrong dtype, event counts that disagree, out-of-range voxel ids, label values not
      in {0, 1, 2}, inconsistent image metas, or a corrupted/truncated file (HDF5 error as
      ``__cause__``).
    FileNotFoundError: a file does not exist.
  """
  factors_of(downsample)  # Checked before any file is opened.
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
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
    factors = _resolve_factors(num_voxels, downsample, size, img.where("image_meta"))
    # Truth groups: in the image file, else in the label file.
    truth_file = {}
    for name, gpath in (("particle", group_path(NEUTRINO_PRODUCER, "particle")),
                        ("marker", group_path(NEUTRINO_PRODUCER, "cluster2d"))):
      for handle, where in ((f, path), (lf, lpath)):
        with _h5_errors(f"{where}: {gpath}"):
          if gpath in handle:
            truth_file[name] = (handle, where)
            break
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
          _densify(ev, num_voxels, factors, image=True, threshold=threshold,
                   where=img.where("voxels", lo + k)) for k, ev in enumerate(img_events)])
      labels = np.stack([
          _densify(ev, num_voxels, factors, image=False, threshold=None,
                   where=lab.where("voxels", lo + k)) for k, ev in enumerate(lab_events)])
      m = hi - lo
      with _h5_errors(f"{path}: {EVENT_ID_PATH}: rows [{lo}, {hi})"):
        ids = f[EVENT_ID_PATH][lo:hi]
      fields = dict(interaction=np.full(m, -1, np.int32),
                    neutrino_energy_gev=np.full(m, np.nan, np.float32),
                    entry=np.arange(lo, hi, dtype=np.int64),
                    event_id=np.stack([ids[k].astype(np.int64)
                                       for k in ("run", "subrun", "event")], axis=1))
      if "particle" in truth_file:
        truth = _read_particles(*truth_file["particle"], lo, hi)
        fields.update(interaction=truth.interaction(), neutrino_energy_gev=truth.energy_gev,
                      neutrino_pdg=truth.pdg, current_type=truth.current_type,
                      interaction_mode=truth.interaction_mode, vertex_cm=truth.vertex_cm)
      if "marker" in truth_file:
        markers, marker_voxels = _read_cluster2d(*truth_file["marker"], NEUTRINO_PRODUCER,
                                                 lo, hi)
        if marker_voxels is not None and marker_voxels != num_voxels:
          raise ValueError(f"{truth_file['marker'][1]}: "
                           f"{group_path(NEUTRINO_PRODUCER, 'cluster2d')}/image_meta: "
                           f"number_of_voxels {list(marker_voxels)}, the images have "
                           f"{list(num_voxels)}")
        fields["vertex_pixel"] = _marker_pixels(markers, num_voxels, factors)
      yield lartpc.SbndEvents(images=images, labels=labels, **fields)


def read_cosmictagger(path: str | os.PathLike, *, downsample: int | Sequence[int] = 2,
                      size: Sequence[int] | None = None,
                      max_events: int | None = None, threshold: float | None = None,
                      label_path: str | os.PathLike | None = None,
                      start: int = 0, stats: ReadStats | None = None) -> lartpc.SbndEvents:
  """Reads (up to ``max_events``) events of a CosmicTagger file into memory.

  Dense arrays are large (7.9 MB per event at 640 x 1024): for whole files use
  :func:`iter_cosmictagger`. Arguments (``stats``: empty events) and errors as there.

  Returns:
    ``SbndEvents`` with images float32 [N, 3, T/fr, W/fc], labels uint8 and the truth of
    :func:`iter_cosmictagger` (interaction -1, energy nan without particle truth).
  """
  stop = None if max_events is None else int(start) + int(max_events)
  chunks = list(iter_cosmictagger(path, downsample=downsample, size=size, threshold=threshold,
                                  label_path=label_path, start=start, stop=stop,
                                  stats=stats))
  if not chunks:
    n_wires, n_ticks = FULL_NUMBER_OF_VOXELS
    fr, fc = ((n_ticks // size[0], n_wires // size[1]) if size is not None
              else factors_of(downsample))
    shape = (0, NUM_PLANES, n_ticks // fr, n_wires // fc)
    return lartpc.SbndEvents(images=np.zeros(shape, np.float32), labels=np.zeros(shape, np.uint8),
                             interaction=np.zeros(0, np.int32),
                             neutrino_energy_gev=np.zeros(0, np.float32))
  return lartpc.SbndEvents.concat(chunks)


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
                       neutrino: Mapping[str, np.ndarray] | None = None,
                       vertex_pixels: np.ndarray | None = None,
                       segments: tuple[np.ndarray, np.ndarray] | None = None,
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
    neutrino: optional ``particle_sbndneutrino`` truth: arrays [N] ``pdg`` (0: no neutrino,
      the event gets no particle), ``current_type``, ``energy_gev`` and [N, 3]
      ``vertex_cm``; optional ``interaction_mode`` (default -1).
    vertex_pixels: optional float [N, 3, 2] (row, column) of the vertex per plane in pixels
      of this grid: ``cluster2d_sbndneutrino`` gets a 5x5 block of value-1 voxels around
      it (clipped to the image); nan: no voxel on that plane; events with no finite vertex
      get no projection.
    segments: optional (cluster index int [N, 3, T, W], -1 = none; value float [N, 3, T, W])
      for ``cluster2d_sbndsegmerged``: per event every plane gets clusters 0 ... max index
      of the event (empty ones too), each holding its pixels with their values.
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
      if neutrino is not None:
        _write_particles(f, _neutrino_rows(neutrino, n), compression)
      if vertex_pixels is not None:
        _write_cluster2d(f, NEUTRINO_PRODUCER, _marker_clusters(vertex_pixels, n_ticks, n_wires, n),
                         (n_wires, n_ticks), compression)
      if segments is not None:
        _write_cluster2d(f, SEGMENT_PRODUCER, _segment_clusters(segments, images.shape),
                         (n_wires, n_ticks), compression)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _dataset_kw(compression: int | None) -> dict:
  return dict(compression="gzip", compression_opts=int(compression)) if compression else {}


def _neutrino_rows(neutrino: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
  """Per event the ``particle_sbndneutrino`` rows (one neutrino or none)."""
  pdg = np.asarray(neutrino["pdg"], np.int64)
  fields = {k: np.asarray(neutrino[k]) for k in ("current_type", "energy_gev", "vertex_cm")}
  mode = np.asarray(neutrino.get("interaction_mode", np.full(n, -1)), np.int64)
  if pdg.shape != (n,) or mode.shape != (n,) or fields["current_type"].shape != (n,) or (
      fields["energy_gev"].shape != (n,) or fields["vertex_cm"].shape != (n, 3)):
    raise ValueError(f"neutrino: expected pdg, current_type, energy_gev, interaction_mode [{n}] "
                     f"and vertex_cm [{n}, 3]")
  rows = []
  for i in range(n):
    row = np.zeros(1 if pdg[i] else 0, PARTICLE_DTYPE)
    if pdg[i]:
      row["pdg"] = pdg[i]
      row["current_type"] = fields["current_type"][i]
      row["interaction_type"] = mode[i]
      row["energy_init"] = fields["energy_gev"][i]
      for a, axis in zip("xyz", range(3)):
        row["vtx"][a] = fields["vertex_cm"][i, axis]
      row["shape"] = 2  # kShapeUnknown
      row["process"] = b"primary"
    rows.append(row)
  return rows


def _write_particles(f: h5py.File, rows: list[np.ndarray], compression: int | None) -> None:
  """``particle_sbndneutrino``: ``extents`` (first, N) per event into ``particles``."""
  g = f.create_group(group_path(NEUTRINO_PRODUCER, "particle"))
  counts = np.array([r.size for r in rows], np.int64)
  extents = np.zeros(len(rows), EXTENTS_DTYPE)
  extents["first"] = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
  extents["N"] = counts
  particles = np.zeros(int(counts.sum()), PARTICLE_DTYPE)
  if particles.size:
    particles[:] = np.concatenate(rows)
  particles["id"] = np.concatenate([np.arange(c) for c in counts]) if counts.size else []
  for name, data in (("extents", extents), ("particles", particles)):
    g.create_dataset(name, data=data, maxshape=(None,), chunks=True, **_dataset_kw(compression))


def _marker_clusters(vertex_pixels: np.ndarray, n_ticks: int, n_wires: int, n: int):
  """Per event None (no projection) or per plane [(cluster id 0, voxels)]: a 5x5 block."""
  vp = np.asarray(vertex_pixels, np.float64)
  if vp.shape != (n, NUM_PLANES, 2):
    raise ValueError(f"vertex_pixels: expected [{n}, {NUM_PLANES}, 2], got {vp.shape}")
  out = []
  d = np.arange(-VERTEX_MARKER_HALF_SIZE, VERTEX_MARKER_HALF_SIZE + 1)
  for i in range(n):
    if not np.isfinite(vp[i]).any():
      out.append(None)
      continue
    planes = []
    for p in range(NUM_PLANES):
      mask = np.zeros((n_ticks, n_wires), bool)
      if np.isfinite(vp[i, p]).all():
        r, c = (int(np.floor(v)) for v in vp[i, p])
        rows, cols = r + d, c + d
        rows, cols = rows[(rows >= 0) & (rows < n_ticks)], cols[(cols >= 0) & (cols < n_wires)]
        mask[np.ix_(rows, cols)] = True
      planes.append([(0, _voxels_of(mask.astype(np.float32), mask))])
    out.append(planes)
  return out


def _segment_clusters(segments, shape):
  """Per event per plane [(cluster id, voxels)] for clusters 0 ... the event's max index."""
  index, values = (np.asarray(a) for a in segments)
  if index.shape != tuple(shape) or values.shape != tuple(shape):
    raise ValueError(f"segments: cluster index and values must have the image shape {shape}")
  out = []
  for i in range(shape[0]):
    k = int(index[i].max()) + 1 if index[i].size else 0
    planes = []
    for p in range(NUM_PLANES):
      plane = values[i, p].astype(np.float32)
      planes.append([(c, _voxels_of(plane, index[i, p] == c)) for c in range(k)])
    out.append(planes)
  return out


def _write_cluster2d(f: h5py.File, producer: str, events, num_voxels: tuple[int, int],
                     compression: int | None) -> None:
  """A larcv3 ``cluster2d`` group (``EventSparseCluster2D``): ``extents`` per event into
  ``projection_extents`` (and ``image_meta``, in step), those into ``cluster_extents``,
  those into ``voxels``. ``events``: per event None or per plane [(cluster id, voxels)]."""
  g = f.create_group(group_path(producer, "cluster2d"))
  extents = np.zeros(len(events), EXTENTS_DTYPE)
  proj, meta, clusters, voxels = [], [], [], []
  n_clusters = n_voxels = 0
  for i, planes in enumerate(events):
    extents[i]["first"] = len(proj)
    extents[i]["N"] = 0 if planes is None else len(planes)
    for pid, plane in enumerate(planes or []):
      p = np.zeros(1, ID_EXTENTS_DTYPE)
      p["first"], p["N"], p["ID"] = n_clusters, len(plane), pid
      proj.append(p)
      m = np.zeros(1, IMAGE_META_DTYPE)
      m["valid"], m["projection_id"] = 1, pid
      m["number_of_voxels"] = num_voxels
      m["image_sizes"] = num_voxels
      meta.append(m)
      for cid, vox in plane:
        c = np.zeros(1, ID_EXTENTS_DTYPE)
        c["first"], c["N"], c["ID"] = n_voxels, vox.size, cid
        clusters.append(c)
        voxels.append(vox)
        n_clusters += 1
        n_voxels += vox.size

  def cat(parts, dtype):
    out = np.zeros(sum(x.size for x in parts), dtype)
    if out.size:  # Field by field keeps the C padding of the dtype.
      for name in dtype.names:
        out[name] = np.concatenate([x[name] for x in parts])
    return out

  for name, data in (("extents", extents), ("projection_extents", cat(proj, ID_EXTENTS_DTYPE)),
                     ("image_meta", cat(meta, IMAGE_META_DTYPE)),
                     ("cluster_extents", cat(clusters, ID_EXTENTS_DTYPE)),
                     ("voxels", cat(voxels, VOXEL_DTYPE))):
    g.create_dataset(name, data=data, maxshape=(None,), chunks=True, **_dataset_kw(compression))


def segments_from_labels(images: np.ndarray, labels: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Stand-in ``cluster2d_sbndsegmerged`` input for simulated events: cluster 0 = the
  neutrino-labelled pixels, 1 = the cosmic-labelled ones (the simulator keeps the origin of
  the charge, not the particle), values = the image.

  Returns:
    (cluster index int32 [N, 3, T, W] with -1 for none, values float32 [N, 3, T, W]).
  """
  labels = np.asarray(labels)
  index = np.where(labels == 2, 0, np.where(labels == 1, 1, -1)).astype(np.int32)
  return index, np.asarray(images, np.float32)


def write_events(path: str | os.PathLike, events: lartpc.SbndEvents, *, segments: bool = True,
                 compression: int | None = 1) -> None:
  """Writes ``SbndEvents`` with everything they carry: images, labels, event ids, the
  neutrino truth (``particle_sbndneutrino``; events with ``neutrino_pdg`` 0 get none), the
  vertex markers (``cluster2d_sbndneutrino``) and, with ``segments``, the per-origin
  clusters of :func:`segments_from_labels` (``cluster2d_sbndsegmerged``). The file's grid
  is the events' resolution."""
  neutrino = {"pdg": events.neutrino_pdg, "current_type": events.current_type,
              "energy_gev": events.neutrino_energy_gev, "vertex_cm": events.vertex_cm,
              "interaction_mode": events.interaction_mode}
  write_cosmictagger(path, events.images, events.labels, event_ids=events.event_id,
                     neutrino=neutrino, vertex_pixels=events.vertex_pixel,
                     segments=segments_from_labels(events.images, events.labels)
                     if segments else None, compression=compression)
