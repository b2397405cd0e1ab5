"""The NEWSdm authors' input format, readers/writers for it, and their cleaning cuts.

The format (``golovart/Napoli_emulsion:NEWSdm/NewsNet70nm``, arXiv 2106.11995): one event is
a 40×40 crop (27.5 nm pixels) at 8 polarisations, **8-bit**, each polarisation image with
its **mode subtracted** (the background level), stacked channels-last, with polarisation 0
**repeated as a 9th channel** to close the 180° cycle: uint8 ``[40, 40, 9]`` (the network
sees ``[40, 40, 9, 1] / 256``). Here a stack of N events is uint8 ``[N, 40, 40, 9]``.

Files (:func:`read_stacks`, :func:`write_stacks`):

* ``.npy``: one array ``[N, 40, 40, 9]``, ``[N, 40, 40, 9, 1]``, ``[N, 40, 40, 8]`` (the
  9th channel is added) or a single event ``[40, 40, 9 | 8]``.
* ``.npz``: the same array under ``images`` (or the file's only array); optional ``kind``
  [N] (``sim.KINDS`` index) is returned as labels.
* ``.tif`` / ``.tiff``: multi-page TIFF, one 40×40 8-bit page per polarisation image,
  event-major (pages ``9·i … 9·i + 8`` are event i; ``channels=8`` for files without the
  repeated page). Read with Pillow.

Values must be integers in [0, 255] (float files holding multiples of 1/256 in [0, 1),
i.e. already divided by 256, are accepted and multiplied back). ``raw=True`` reads crops
that still carry their background level and subtracts each image's mode
(:func:`subtract_mode`). Every error names the file and, where it applies, the event.

Cleaning (:func:`cleaning_cuts`), the authors' three cuts in order, each counted:
``saturated`` (any pixel > 128 after mode subtraction), ``brightest`` (event brightness in
the sample's top 2 %; brightness = median over the 8 polarisations of the image maximum,
the threshold the sample's 98th percentile unless given) and ``not_isolated`` (the
polarisation-averaged image has more than one connected cluster above
``isolation_threshold`` counts of at least ``isolation_min_pixels`` pixels).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
import zipfile

import numpy as np
from scipy import ndimage

CROP = 40
NUM_POLARISATIONS = 8
NUM_CHANNELS = 9  # 8 polarisations + pol0 repeated.
SATURATION = 128
BRIGHTEST_FRACTION = 0.02
ISOLATION_THRESHOLD = 10.0  # Counts in the polarisation-averaged, mode-subtracted image.
ISOLATION_MIN_PIXELS = 4


@dataclasses.dataclass
class Stacks:
  """Events in the authors' format: ``images`` uint8 [N, 40, 40, 9]; ``kind`` int32 [N] or
  None; ``path`` the file they came from."""
  images: np.ndarray
  kind: np.ndarray | None
  path: str


def add_repeated_channel(images: np.ndarray) -> np.ndarray:
  """uint8 [..., 8] -> [..., 9]: polarisation 0 repeated as the 9th channel."""
  images = np.asarray(images)
  if images.shape[-1] != NUM_POLARISATIONS:
    raise ValueError(f"expected {NUM_POLARISATIONS} polarisations in the last axis, got "
                     f"shape {images.shape}")
  return np.concatenate([images, images[..., :1]], axis=-1)


def image_modes(raw: np.ndarray) -> np.ndarray:
  """Mode (most frequent value; the smallest on ties) of each 8-bit image.

  Args:
    raw: uint8 [N, H, W, P].

  Returns:
    int32 [N, P].
  """
  raw = np.asarray(raw)
  n, h, w, p = raw.shape
  flat = np.moveaxis(raw, -1, 1).reshape(n * p, h * w).astype(np.int64)
  offsets = (np.arange(n * p) * 256)[:, None]
  hist = np.bincount((flat + offsets).ravel(), minlength=n * p * 256).reshape(n * p, 256)
  return hist.argmax(axis=1).reshape(n, p).astype(np.int32)


def subtract_mode(raw: np.ndarray) -> np.ndarray:
  """Each polarisation image minus its mode, clipped at 0: uint8 [N, H, W, P] -> same."""
  raw = np.asarray(raw)
  if raw.dtype != np.uint8:
    raise ValueError(f"subtract_mode: expected uint8 images, got {raw.dtype}")
  modes = image_modes(raw)
  return np.clip(raw.astype(np.int16) - modes[:, None, None, :], 0, 255).astype(np.uint8)


def authors_format(raw: np.ndarray) -> np.ndarray:
  """Raw camera crops uint8 [N, 40, 40, 8] -> the authors' uint8 [N, 40, 40, 9]."""
  return add_repeated_channel(subtract_mode(raw))


def _as_uint8(array: np.ndarray, where: str) -> np.ndarray:
  a = np.asarray(array)
  if a.dtype == np.uint8:
    return a
  if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
    bad = np.flatnonzero(((a < 0) | (a > 255)).reshape(len(a), -1).any(axis=1)) if a.size else []
    if len(bad):
      raise ValueError(f"{where}: event {int(bad[0])} has values outside [0, 255] "
                       f"({len(bad)} such events); expected 8-bit images")
    return a.astype(np.uint8)
  if np.issubdtype(a.dtype, np.floating):
    scaled = a * 256.0
    ok = np.isfinite(a) & (a >= 0) & (a < 1) & (np.abs(scaled - np.rint(scaled)) < 1e-3)
    bad = np.flatnonzero(~ok.reshape(len(a), -1).all(axis=1))
    if len(bad):
      raise ValueError(f"{where}: event {int(bad[0])} holds float values that are not "
                       "8-bit counts / 256 in [0, 1) (the authors' network input); store "
                       "uint8 counts instead")
    return np.rint(scaled).astype(np.uint8)
  raise ValueError(f"{where}: unsupported dtype {a.dtype}; expected uint8 images")


def check_stack(images: np.ndarray, where: str, *, raw: bool = False) -> np.ndarray:
  """Validates and normalises an array to uint8 [N, 40, 40, 9] (see the module docstring).

  Args:
    images: [N, 40, 40, 9], [N, 40, 40, 9, 1], [N, 40, 40, 8] or one event without N.
    where: names the file in errors.
    raw: the crops still carry their background level: subtract each image's mode.

  Raises:
    ValueError: naming ``where`` and, for a bad event, its index: wrong shape, values that
      are not 8-bit, or a 9th channel that differs from polarisation 0.
  """
  a = np.asarray(images)
  if a.ndim == 5 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 3:
    a = a[None]
  if a.ndim != 4 or a.shape[1:3] != (CROP, CROP) or a.shape[3] not in (NUM_POLARISATIONS,
                                                                        NUM_CHANNELS):
    raise ValueError(f"{where}: array of shape {np.shape(images)}; expected [N, {CROP}, "
                     f"{CROP}, {NUM_CHANNELS}] (or [..., {NUM_POLARISATIONS}], or a trailing "
                     "axis of 1)")
  if len(a) == 0:
    raise ValueError(f"{where}: no event")
  a = _as_uint8(a, where)
  if a.shape[3] == NUM_CHANNELS:
    differs = np.flatnonzero(np.any(a[..., 8] != a[..., 0], axis=(1, 2)))
    if len(differs):
      raise ValueError(f"{where}: event {int(differs[0])}: channel 9 differs from polarisation "
                       f"0 ({len(differs)} such events); the format repeats pol0 as channel 9")
    a = a[..., :NUM_POLARISATIONS]
  if raw:
    a = subtract_mode(a)
  return add_repeated_channel(a)


def _read_tiff(path: str, channels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  pages = []
  with Image.open(path) as im:
    for i in range(getattr(im, "n_frames", 1)):
      im.seek(i)
      page = np.asarray(im)
      if page.shape != (CROP, CROP):
        raise ValueError(f"{path}: page {i} (event {i // channels}, channel {i % channels}) "
                         f"has shape {page.shape}; expected {CROP}x{CROP} 8-bit pages")
      pages.append(page)
  if len(pages) % channels:
    raise ValueError(f"{path}: {len(pages)} pages is not a multiple of {channels} channels "
                     f"per event (the last event, {len(pages) // channels}, is incomplete)")
  return np.stack(pages).reshape(-1, channels, CROP, CROP).transpose(0, 2, 3, 1)


def read_stacks(path: str | os.PathLike, *, raw: bool = False, channels: int = NUM_CHANNELS
                ) -> Stacks:
  """Reads events in the authors' format (module docstring) -> :class:`Stacks`.

  Args:
    path: ``.npy``, ``.npz``, ``.tif`` or ``.tiff``.
    raw: subtract each polarisation image's mode (crops not yet background-subtracted).
    channels: TIFF pages per event, 9 (pol0 repeated) or 8.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  ext = os.path.splitext(path)[1].lower()
  kind = None
  try:
    if ext == ".npy":
      array = np.load(path, allow_pickle=False)
    elif ext == ".npz":
      with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
          raise ValueError(f"{path}: no 'images' array (arrays: {keys})")
        array = f[key]
        kind = np.asarray(f["kind"], np.int32) if "kind" in keys else None
    elif ext in (".tif", ".tiff"):
      if channels not in (NUM_POLARISATIONS, NUM_CHANNELS):
        raise ValueError(f"{path}: channels={channels}; expected 8 or 9")
      array = _read_tiff(path, channels)
    else:
      raise ValueError(f"{path}: unknown extension {ext!r}; expected .npy, .npz, .tif, .tiff")
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    if isinstance(e, ValueError) and str(e).startswith(path):
      raise  # Ours: names the file already.
    raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
  images = check_stack(array, path, raw=raw)
  if kind is not None and kind.shape != (len(images),):
    raise ValueError(f"{path}: 'kind' has shape {kind.shape}, expected ({len(images)},)")
  return Stacks(images=images, kind=kind, path=path)


def write_stacks(path: str | os.PathLike, images: np.ndarray,
                 kind: np.ndarray | None = None) -> str:
  """Writes uint8 [N, 40, 40, 9] in the format its extension names; returns the path."""
  path = os.fspath(path)
  images = check_stack(images, path)
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    np.save(path, images)
  elif ext == ".npz":
    extra = {} if kind is None else {"kind": np.asarray(kind, np.int32)}
    np.savez_compressed(path, images=images, **extra)
  elif ext in (".tif", ".tiff"):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    pages = [Image.fromarray(np.ascontiguousarray(images[i, :, :, c]))
             for i in range(len(images)) for c in range(NUM_CHANNELS)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
  else:
    raise ValueError(f"{path}: unknown extension {ext!r}; expected .npy, .npz, .tif, .tiff")
  return path


# ----------------------------------------------------------------------------- cleaning


def event_brightness(images: np.ndarray) -> np.ndarray:
  """Median over the 8 polarisations of each image's maximum: float32 [N] (counts)."""
  pols = np.asarray(images)[..., :NUM_POLARISATIONS]
  return np.median(pols.max(axis=(1, 2)), axis=-1).astype(np.float32)


def cluster_counts(images: np.ndarray, threshold: float = ISOLATION_THRESHOLD,
                   min_pixels: int = ISOLATION_MIN_PIXELS) -> np.ndarray:
  """Connected clusters (8-connectivity) in the polarisation-averaged image: int32 [N].

  A cluster is a connected set of pixels above ``threshold`` counts with at least
  ``min_pixels`` pixels (noise specks are smaller). All events are labelled at once (a
  3D labelling that never connects two events).
  """
  mean = np.asarray(images)[..., :NUM_POLARISATIONS].astype(np.float32).mean(axis=-1)
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True
  labels, num = ndimage.label(mean > threshold, structure=structure)
  if num == 0:
    return np.zeros(len(mean), np.int32)
  sizes = np.bincount(labels.ravel(), minlength=num + 1)
  big = sizes >= min_pixels
  big[0] = False
  # Which event each label lives in: labels never span events.
  event_of = np.zeros(num + 1, np.int64)
  flat = labels.reshape(len(mean), -1)
  ev, pix = np.nonzero(flat)
  event_of[flat[ev, pix]] = ev
  return np.bincount(event_of[1:][big[1:]], minlength=len(mean)).astype(np.int32)


@dataclasses.dataclass
class CutResult:
  """Outcome of :func:`cleaning_cuts`.

  Attributes:
    keep: bool [N], events passing every cut.
    counts: ``{"events", "saturated", "brightest", "not_isolated", "kept"}``: events
      removed by each cut in order (an event counts at the first cut it fails).
    brightness_threshold: the brightness above which events were cut (counts).
  """
  keep: np.ndarray
  counts: dict[str, int]
  brightness_threshold: float


def cleaning_cuts(images: np.ndarray, *, saturation: int = SATURATION,
                  brightest_fraction: float = BRIGHTEST_FRACTION,
                  brightness_threshold: float | None = None,
                  isolation_threshold: float = ISOLATION_THRESHOLD,
                  isolation_min_pixels: int = ISOLATION_MIN_PIXELS,
                  require_isolated: bool = True) -> CutResult:
  """The authors' cleaning cuts on mode-subtracted events uint8 [N, 40, 40, 8 | 9].

  Args:
    images: mode-subtracted events.
    saturation: cut events with any pixel above this.
    brightest_fraction: without ``brightness_threshold``, cut the events whose brightness
      (:func:`event_brightness`) is above the sample's ``1 − brightest_fraction`` quantile
      (computed on the events passing the saturation cut).
    brightness_threshold: a fixed threshold instead (e.g. from a calibration sample, for
      streams that never hold the whole sample).
    isolation_threshold, isolation_min_pixels: see :func:`cluster_counts`.
    require_isolated: apply the isolation cut.
  """
  images = np.asarray(images)
  n = len(images)
  pols = images[..., :NUM_POLARISATIONS]
  saturated = np.any(pols > saturation, axis=(1, 2, 3))
  brightness = event_brightness(pols)
  if brightness_threshold is None:
    alive = brightness[~saturated]
    brightness_threshold = (float(np.quantile(alive, 1 - brightest_fraction))
                            if len(alive) else np.inf)
  brightest = ~saturated & (brightness > brightness_threshold)
  alive = ~saturated & ~brightest
  if require_isolated:
    not_isolated = alive & (cluster_counts(pols, isolation_threshold,
                                           isolation_min_pixels) != 1)
  else:
    not_isolated = np.zeros(n, bool)
  keep = alive & ~not_isolated
  counts = {"events": n, "saturated": int(saturated.sum()), "brightest": int(brightest.sum()),
            "not_isolated": int(not_isolated.sum()), "kept": int(keep.sum())}
  return CutResult(keep=keep, counts=counts, brightness_threshold=float(brightness_threshold))


def merge_counts(*counts: dict[str, int]) -> dict[str, int]:
  """Sums :attr:`CutResult.counts` of several chunks."""
  out: dict[str, int] = {}
  for c in counts:
    for k, v in c.items():
      out[k] = out.get(k, 0) + int(v)
  return out


def describe(counts: dict[str, Any]) -> str:
  """One line: ``events 1000: saturated 3, brightest 20, not isolated 41 -> kept 936``."""
  return (f"events {counts['events']}: saturated {counts['saturated']}, brightest "
          f"{counts['brightest']}, not isolated {counts['not_isolated']} -> kept "
          f"{counts['kept']}")
