"""Random-access sources of fixed-shape SBND examples for the trainer (grain-compatible).

Every example is a dict of numpy arrays:

  image                float32 [3, H, W]  (plane, drift row, wire column); 0 = no charge
  label                int32   [3, H, W]  0 background, 1 cosmic, 2 neutrino
  interaction          int32   []         sbnd.sim.INTERACTIONS index; -1 unknown
  neutrino_energy_gev  float32 []         GeV; 0 for cosmic_only, nan when unknown
  neutrino_pdg         int32   []         PDG code; 0 none or unknown
  current_type         int32   []         0 CC, 1 NC; -1 none or unknown
  interaction_mode     int32   []         generator code (e.g. 1001 CCQE); -1 unknown
  vertex_cm            float32 [3]        neutrino vertex (x, y, z), cm; nan none
  vertex_pixel         float32 [3, 2]     per plane (row, column) of the vertex, pixels
  file_index           int32   []         index into the split's files; -1 simulated
  entry                int64   []         row in that file (simulation: index in split)
  event_id             int64   [3]        (run, subrun, event)

:class:`SbndSource` densifies one sparse example of the TFDS dataset
(``recoil_jax.studies.sbnd.dataset``, ``builder.as_data_source(split)``);
:class:`InMemorySbndSource` wraps ``sbnd.sim.SbndEvents`` (colab, tests).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recoil_jax.data import builder_lib
from recoil_jax.data import pipeline

NUM_PLANES = 3
# Per-event fields beside image and label: name -> (dtype, shape, value when absent).
EVENT_FIELDS = {"interaction": (np.int32, (), -1), "neutrino_energy_gev": (np.float32, (), np.nan),
                "neutrino_pdg": (np.int32, (), 0), "current_type": (np.int32, (), -1),
                "interaction_mode": (np.int32, (), -1),
                "vertex_cm": (np.float32, (3,), np.nan),
                "vertex_pixel": (np.float32, (NUM_PLANES, 2), np.nan),
                "file_index": (np.int32, (), -1), "entry": (np.int64, (), -1),
                "event_id": (np.int64, (3,), -1)}


def event_fields(get) -> dict[str, np.ndarray]:
  """``EVENT_FIELDS`` of one example, ``get(name)`` -> value or None (absent: the default)."""
  out = {}
  for name, (dtype, shape, default) in EVENT_FIELDS.items():
    value = get(name)
    out[name] = (np.full(shape, default, dtype) if value is None
                 else np.asarray(value, dtype).reshape(shape))
  return out


def densify(pixels: np.ndarray, values: np.ndarray, labels: np.ndarray, height: int,
            width: int, where: str = "example") -> tuple[np.ndarray, np.ndarray]:
  """Dense (image float32 [3, H, W], label int32 [3, H, W]) of one sparse event.

  Args:
    pixels: int [n] flat plane-major indices into [3, H, W].
    values: float32 [n]; labels: integer [n] in {0, 1, 2}.
    height, width: the dataset's image size per plane.
    where: names the example in errors.
  """
  pixels = np.asarray(pixels)
  n = pixels.shape[0]
  if pixels.ndim != 1 or np.shape(values) != (n,) or np.shape(labels) != (n,):
    raise ValueError(f"{where}: pixels {pixels.shape}, values {np.shape(values)} and labels "
                     f"{np.shape(labels)} must be 1-D of one length")
  size = NUM_PLANES * height * width
  if n and (int(pixels.min()) < 0 or int(pixels.max()) >= size):
    raise ValueError(f"{where}: pixel index {int(pixels.max())} out of range for 3x{height}x"
                     f"{width} (the dataset was built at another resolution?)")
  image = np.zeros(size, np.float32)
  label = np.zeros(size, np.int32)
  image[pixels] = values
  label[pixels] = labels
  return image.reshape(NUM_PLANES, height, width), label.reshape(NUM_PLANES, height, width)


class SbndSource:
  """Fixed-shape view of a split of the SBND TFDS dataset."""

  def __init__(self, data_source: Sequence[dict[str, Any]], height: int, width: int,
               name: str = "", min_abs_value: float | Sequence[float] = 0.0):
    if int(height) < 1 or int(width) < 1:
      raise ValueError(f"height and width must be >= 1, got {height}, {width}")
    per_plane = np.broadcast_to(np.asarray(min_abs_value, np.float32), (NUM_PLANES,)).copy() \
        if np.size(min_abs_value) in (1, NUM_PLANES) else None
    if per_plane is None or not (per_plane >= 0).all():
      raise ValueError(f"min_abs_value must be >= 0, one value or one per plane (U, V, Y), "
                       f"got {min_abs_value}")
    self._source = data_source
    # Pixels with |value| below this (per plane) are zeroed after densifying (labels
    # untouched): at coarse resolutions a pixel averages hundreds of native pixels, so
    # native noise crossings become specks of a few hundredths of an ADC in most pixels.
    self.min_abs_value = per_plane
    self.height = int(height)
    self.width = int(width)
    self.name = name or str(getattr(data_source, "split", "") or "sbnd split")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = pipeline.normalise_index(index, len(self), self.name)
    ex = self._source[i]
    image, label = densify(ex["pixels"], ex["values"], ex["labels"], self.height, self.width,
                           where=f"{self.name}[{i}]")
    if self.min_abs_value.any():
      keep = np.abs(image) >= self.min_abs_value[:, None, None]
      image = np.where(keep, image, np.float32(0))
    return {"image": image, "label": label, **event_fields(ex.get)}

  def __repr__(self) -> str:
    return f"SbndSource({self.name}, {len(self)} examples, 3x{self.height}x{self.width})"


class InMemorySbndSource:
  """Fixed-shape view of ``sbnd.sim.SbndEvents`` held in memory."""

  def __init__(self, events):
    images = np.asarray(events.images)
    if images.ndim != 4 or images.shape[1] != NUM_PLANES:
      raise ValueError(f"events.images: expected [N, 3, H, W], got {images.shape}")
    if np.shape(events.labels) != images.shape:
      raise ValueError(f"events.labels shape {np.shape(events.labels)} != images {images.shape}")
    self._events = events
    self.height, self.width = images.shape[2:]

  def __len__(self) -> int:
    return len(self._events.images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    e = self._events
    i = pipeline.normalise_index(index, len(self), "events")
    return {"image": np.asarray(e.images[i], np.float32),
            "label": np.asarray(e.labels[i], np.int32),
            **event_fields(lambda k: getattr(e, k)[i] if getattr(e, k, None) is not None
                           else None)}


def sbnd_sources(builder, splits: Sequence[str] | None = None,
                 min_abs_value: float | Sequence[float] = 0.0) -> dict[str, SbndSource]:
  """``{split: SbndSource}`` for a prepared SBND dataset builder (all its splits by default)."""
  names = builder_lib.prepared_splits(builder, splits,
                                      build_with="sbnd.dataset.build_sbnd_dataset")
  # The size it was built at (metadata), not a config object that may be a bare name.
  meta = (builder.info.metadata or {}).get("config") or {}
  height = int(meta.get("height", builder.builder_config.height))
  width = int(meta.get("width", builder.builder_config.width))
  return {s: SbndSource(builder.as_data_source(s), height, width, name=s,
                       min_abs_value=min_abs_value)
          for s in names}
