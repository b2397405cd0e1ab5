"""Random-access sources of NEWSdm examples for the trainer (grain-compatible).

Every example is a dict of numpy arrays:

  image         float32 [40, 40, 9]  authors' format / 256 (8 polarisations + pol0 again)
  label         int32   []           0 C30, 1 C60, 2 C100, 3 background (fog, γ, Ag)
  signal        float32 []           1 for carbon ions
  kind          int32   []           ``sim.KINDS`` index
  bar_shift_nm  float32 []           the classical baseline's score (``barycentre.py``)
  passed_cuts   float32 []           1 if the event passes the cleaning cuts
  energy_kev    float32 []           ion energy (0 for backgrounds)

:class:`StoredSource` reads a split of the TFDS dataset (``dataset.py``: only events that
passed the cuts are stored). :class:`StreamingSource` *generates* event i on demand — the
big test sets (10⁵ background events per kind) are never stored or held in memory: event
i is event ``i % chunk_size`` of chunk ``i // chunk_size``, simulated with
``sim.chunk_seed(seed, stream, chunk)``, and the few most recent chunks are cached (a
sequential pass simulates each chunk once). Its events are *not* removed by the cuts
(a random-access source must know its length up front): they carry ``passed_cuts``, which
the loss and the analysis use as a mask.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from recoil_jax.data import pipeline
from recoil_jax.studies.newsdm import barycentre
from recoil_jax.studies.newsdm import dataset as newsdm_dataset
from recoil_jax.studies.newsdm import readers
from recoil_jax.studies.newsdm import sim

SCALE = np.float32(1.0 / 256.0)
BACKGROUND_LABEL = 3


def label_of(kind: np.ndarray) -> np.ndarray:
  """4-class label (C30, C60, C100, background) of ``sim.KINDS`` codes: int32."""
  return np.minimum(np.asarray(kind), BACKGROUND_LABEL).astype(np.int32)


def make_example(image8: np.ndarray, kind: int, bar_shift_nm: float, passed: bool,
                 energy_kev: float) -> dict[str, np.ndarray]:
  """One example (module docstring) from a mode-subtracted uint8 [40, 40, 8 | 9] event."""
  image8 = np.asarray(image8)[..., :sim.NUM_POLARISATIONS]
  image = np.concatenate([image8, image8[..., :1]], axis=-1).astype(np.float32) * SCALE
  return {"image": image, "label": label_of(kind)[()], "signal": np.float32(kind < 3),
          "kind": np.int32(kind), "bar_shift_nm": np.float32(bar_shift_nm),
          "passed_cuts": np.float32(passed), "energy_kev": np.float32(energy_kev)}


class StoredSource:
  """Fixed-shape view of a split of the NEWSdm TFDS dataset."""

  def __init__(self, data_source: Sequence[Mapping[str, Any]], name: str):
    self._source = data_source
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = pipeline.normalise_index(index, len(self), self.name)
    ex = self._source[i]
    return make_example(ex["image"], int(ex["kind"]), float(ex["bar_shift_nm"]), True,
                        float(ex["energy_kev"]))


class StreamingSource:
  """``num`` events of one kind, generated on demand (module docstring).

  Args:
    kind: a ``sim.KINDS`` name.
    num: events.
    seed: simulation seed; ``stream``: its stream key (different test sets, different keys).
    chunk_size: events per simulated chunk.
    beam_angle_deg: carbon-ion beam direction.
    params: ``sim.SimParams`` overrides.
    cuts: ``dataset.CutSpec``; ``brightness_threshold``: from
      ``dataset.brightness_thresholds`` (same calibration as the training data).
    cache_chunks: chunks kept (a few, for the pipeline's threads).
  """

  def __init__(self, kind: str, num: int, *, seed: int, stream: int, chunk_size: int = 250,
               beam_angle_deg: float = 0.0, params: Mapping[str, Any] | None = None,
               cuts: newsdm_dataset.CutSpec = newsdm_dataset.CutSpec(),
               brightness_threshold: float = np.inf, cache_chunks: int = 4,
               name: str = ""):
    if kind not in sim.KIND_CODE:
      raise ValueError(f"StreamingSource: unknown kind {kind!r}; known: {sim.KINDS}")
    if num < 1 or chunk_size < 1:
      raise ValueError(f"StreamingSource: need num, chunk_size >= 1, got {num}, {chunk_size}")
    self.kind, self.num, self.seed, self.stream = kind, int(num), int(seed), int(stream)
    self.chunk_size, self.beam_angle_deg = int(chunk_size), float(beam_angle_deg)
    self.params = dict(params or {})
    self.cuts = cuts
    self.brightness_threshold = float(brightness_threshold)
    self.name = name or f"{kind} stream {stream}"
    self._cache: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
    self._cache_chunks = max(1, int(cache_chunks))
    self._lock = threading.Lock()
    self.counts: dict[int, dict[str, int]] = {}  # Cut counts per generated chunk.

  def __len__(self) -> int:
    return self.num

  def chunk(self, c: int) -> dict[str, np.ndarray]:
    """Chunk ``c`` as arrays (``images`` uint8 [n, 40, 40, 9], ``passed``, ``bar_shift_nm``,
    ``kind``, ``energy_kev``); simulated once while cached."""
    with self._lock:
      if c in self._cache:
        self._cache.move_to_end(c)
        return self._cache[c]
    n = min(self.chunk_size, self.num - c * self.chunk_size)
    ev = sim.simulate(sim.chunk_seed(self.seed, self.stream, c), n, self.kind,
                      beam_angle_deg=self.beam_angle_deg, params=self.params)
    images, passed, counts = newsdm_dataset.clean_chunk(
        ev, {self.kind: self.brightness_threshold}, self.cuts)
    out = {"images": images, "passed": passed, "bar_shift_nm": barycentre.max_shift_nm(images),
           "kind": ev["kind"], "energy_kev": ev["energy_kev"]}
    with self._lock:
      self._cache[c] = out
      self.counts[c] = counts[self.kind]
      while len(self._cache) > self._cache_chunks:
        self._cache.popitem(last=False)
    return out

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = pipeline.normalise_index(index, self.num, self.name)
    ch = self.chunk(i // self.chunk_size)
    j = i % self.chunk_size
    return make_example(ch["images"][j], int(ch["kind"][j]), float(ch["bar_shift_nm"][j]),
                        bool(ch["passed"][j]), float(ch["energy_kev"][j]))

  def cut_counts(self) -> dict[str, int]:
    """Cut counts summed over the chunks generated so far (all after a full pass)."""
    with self._lock:
      return readers.merge_counts(*self.counts.values()) if self.counts else {}

  def __repr__(self) -> str:
    return (f"StreamingSource({self.name}: {self.num} {self.kind} events, beam "
            f"{self.beam_angle_deg}°, seed {self.seed}, stream {self.stream})")
