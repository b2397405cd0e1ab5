"""Random-access sources of fixed-shape SBND examples for the trainer (grain-compatible).

Every example is a dict of numpy arrays:

  image                float32 [3, H, W]  (plane, drift row, wire column); 0 = no charge
  label                int32   [3, H, W]  0 background, 1 cosmic, 2 neutrino
  interaction          int32   []         sbnd.sim.INTERACTIONS index; -1 unknown
  neutrino_energy_gev  float32 []         GeV; 0 for cosmic_only, nan when unknown

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
               name: str = "", min_abs_value: float = 0.0):
    if int(height) < 1 or int(width) < 1:
      raise ValueError(f"height and width must be >= 1, got {height}, {width}")
    if not min_abs_value >= 0:
      raise ValueError(f"min_abs_value must be >= 0, got {min_abs_value}")
    self._source = data_source
    # Pixels with |value| below this are zeroed after densifying (labels untouched): at
    # coarse resolutions a pixel averages hundreds of native pixels, so one native noise
    # crossing becomes a speck of ~0.02 ADC in almost half of the pixels.
    self.min_abs_value = float(min_abs_value)
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
    if self.min_abs_value > 0:
      image = np.where(np.abs(image) >= self.min_abs_value, image, np.float32(0))
    return {"image": image, "label": label,
            "interaction": np.int32(ex["interaction"]),
            "neutrino_energy_gev": np.float32(ex["neutrino_energy_gev"])}

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
            "interaction": np.int32(e.interaction[i]),
            "neutrino_energy_gev": np.float32(e.neutrino_energy_gev[i])}


def sbnd_sources(builder, splits: Sequence[str] | None = None,
                 min_abs_value: float = 0.0) -> dict[str, SbndSource]:
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
