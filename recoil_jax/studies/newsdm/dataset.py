"""TFDS dataset of simulated NEWSdm events for training and validation (array_record, no TF).

Splits ``train`` and ``validation``: ``num_train`` / ``num_validation`` *simulated* events,
kinds cycling through ``kinds`` (exactly balanced within every chunk whose size the number
of kinds divides), carbon-ion beam angle cycling through ``beam_angles_deg`` chunk by chunk.
Chunk c of split s is ``sim.simulate(sim.chunk_seed(seed, s, c), ...)``: the dataset
depends only on the config. Each chunk is put in the authors' format
(``readers.authors_format``) and cleaned (``readers.cleaning_cuts``, with the per-kind
brightness thresholds of :func:`brightness_thresholds`); removed events are counted per
split and kind in the metadata (:func:`cut_counts`), and the splits hold the kept ones.

Example: ``image`` uint8 [40, 40, 8] (mode-subtracted; channel 9 is added by the source),
``kind`` int32 (``sim.KINDS``), ``energy_kev``, ``direction_deg``, ``length_nm``,
``beam_angle_deg`` float32 (nan where not defined), ``num_grains`` int32 and
``bar_shift_nm`` float32 (the classical baseline's score, computed once here).

Config names hash every field (``builder_lib.hashed_name``); see
``recoil_jax.data.builder_lib`` for reuse, atomicity and leftovers of killed builds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from recoil_jax.data import builder_lib
from recoil_jax.studies.newsdm import barycentre
from recoil_jax.studies.newsdm import readers
from recoil_jax.studies.newsdm import sim

SPLITS = ("train", "validation")
_SPLIT_CODE = {"train": 0, "validation": 1}
CALIBRATION_STREAM = 1000  # sim stream key of the brightness-calibration samples.


def _toy(seed, num, kinds, *, beam_angle_deg, params):
  return sim.simulate(seed, num, kinds, beam_angle_deg=beam_angle_deg, params=params)


#: NEWSdm simulators: ``fn(seed, num, kinds, *, beam_angle_deg, params) -> dict`` (the
#: signature and output of ``sim.simulate``), by the name a config records.
SIMULATORS = builder_lib.SimulatorRegistry(
    "newsdm_tfds", {"toy": _toy},
    signature="fn(seed, num, kinds, *, beam_angle_deg, params) -> dict like sim.simulate")
register_simulator = SIMULATORS.register


@dataclasses.dataclass(frozen=True)
class CutSpec:
  """The cleaning-cut settings (``readers.cleaning_cuts``) and the calibration sample size."""
  saturation: int = readers.SATURATION
  brightest_fraction: float = readers.BRIGHTEST_FRACTION
  isolation_threshold: float = readers.ISOLATION_THRESHOLD
  isolation_min_pixels: int = readers.ISOLATION_MIN_PIXELS
  calibration_events: int = 2000


@functools.lru_cache(maxsize=64)
def _threshold(kind: str, seed: int, beam_angle_deg: float, params: tuple, cuts: CutSpec,
               simulator: str) -> float:
  simulate = SIMULATORS.get(simulator)
  ev = simulate(sim.chunk_seed(seed, CALIBRATION_STREAM, sim.KIND_CODE[kind]),
                cuts.calibration_events, kind, beam_angle_deg=beam_angle_deg,
                params=dict(params))
  images = readers.authors_format(ev["raw"])
  res = readers.cleaning_cuts(images, saturation=cuts.saturation,
                              brightest_fraction=cuts.brightest_fraction,
                              require_isolated=False)
  return res.brightness_threshold


def brightness_thresholds(kinds: Sequence[str], *, seed: int, params: Mapping[str, Any],
                          cuts: CutSpec, simulator: str = "toy") -> dict[str, float]:
  """Per kind, the brightness above which the top ``brightest_fraction`` of a calibration
  sample lies (``cuts.calibration_events`` events of that kind, beam at 0°, its own seed).

  The authors cut the brightest 2 % of each sample; a stream (train chunks, 10⁵ test
  events) never holds its whole sample, so the quantile comes from this calibration
  sample instead, the same for every split and test set (cached).
  """
  params_t = tuple(sorted(params.items()))
  return {k: _threshold(k, int(seed), 0.0, params_t, cuts, simulator) for k in kinds}


def clean_chunk(events: Mapping[str, np.ndarray], thresholds: Mapping[str, float],
                cuts: CutSpec) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, int]]]:
  """Authors' format, cuts and barycentre shift of one simulated chunk.

  Returns:
    ``(images uint8 [N, 40, 40, 9], passed bool [N], {kind: cut counts})``.
  """
  images = readers.authors_format(events["raw"])
  kinds = np.asarray(events["kind"])
  passed = np.zeros(len(kinds), bool)
  counts = {}
  for code in np.unique(kinds):
    name = sim.KINDS[int(code)]
    sel = kinds == code
    res = readers.cleaning_cuts(images[sel], saturation=cuts.saturation,
                                brightness_threshold=thresholds[name],
                                isolation_threshold=cuts.isolation_threshold,
                                isolation_min_pixels=cuts.isolation_min_pixels)
    passed[sel] = res.keep
    counts[name] = res.counts
  return images, passed, counts


@dataclasses.dataclass(eq=False)
class NewsdmConfig(tfds.core.BuilderConfig):
  """Sizes, kinds and seeds of one NEWSdm dataset; build it with :func:`make_config`."""
  num_train: int = 0
  num_validation: int = 0
  seed: int = 0
  chunk_size: int = 240
  kinds: tuple = ()
  beam_angles_deg: tuple = (0.0,)
  simulator: str = "toy"
  physics_kwargs: tuple = ()
  cuts: tuple = ()  # ((field, value), ...) of CutSpec.

  def num_events(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation}[split]


def make_config(*, num_train: int, num_validation: int, seed: int, kinds: Sequence[str],
                beam_angles_deg: Sequence[float] = (0.0,), chunk_size: int = 240,
                simulator: str = "toy", physics_kwargs: Mapping[str, Any] | None = None,
                cuts: CutSpec = CutSpec()) -> NewsdmConfig:
  """A :class:`NewsdmConfig` whose name encodes the sizes and hashes every field."""
  if num_train < 1 or num_validation < 1 or chunk_size < 1:
    raise ValueError(f"need num_train, num_validation, chunk_size >= 1; got {num_train}, "
                     f"{num_validation}, {chunk_size}")
  sim.kind_codes(tuple(kinds), 1)  # Raises on unknown kinds.
  SIMULATORS.check(simulator)
  sim.make_params(physics_kwargs)  # Raises on unknown parameters.
  fields = dict(num_train=int(num_train), num_validation=int(num_validation), seed=int(seed),
                chunk_size=int(chunk_size), kinds=tuple(kinds),
                beam_angles_deg=tuple(float(a) for a in beam_angles_deg), simulator=simulator,
                physics_kwargs=tuple(sorted((physics_kwargs or {}).items())),
                cuts=tuple(dataclasses.asdict(cuts).items()))
  name = builder_lib.hashed_name(
      f"sim-{simulator}-n{num_train}-v{num_validation}-k{len(kinds)}-s{seed}", fields)
  return NewsdmConfig(name=name, description=f"simulator {simulator!r} (simulated): "
                      f"{num_train}/{num_validation} events of {','.join(kinds)}", **fields)


class NewsdmEvents(tfds.core.GeneratorBasedBuilder):
  """Simulated NEWSdm events in the authors' format (arXiv 2106.11995)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Toy emulsion events at 8 polarisations, cleaned.",
                   "1.1.0": "Carbon ranges from recoil_jax.physics.ions (NIT emulsion)."}

  def _info(self) -> tfds.core.DatasetInfo:
    f32 = np.float32
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n", 1)[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(40, 40, 8), dtype=np.uint8),
            "kind": np.int32, "num_grains": np.int32, "energy_kev": f32,
            "direction_deg": f32, "length_nm": f32, "beam_angle_deg": f32,
            "bar_shift_nm": f32}),
        metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  @property
  def _cfg(self) -> NewsdmConfig:
    return self.builder_config  # type: ignore[return-value]

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self._cfg
    self.info.metadata["config"] = {k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in dataclasses.asdict(cfg).items()
                                    if k in ("num_train", "num_validation", "seed",
                                             "chunk_size", "kinds", "beam_angles_deg",
                                             "simulator")}
    self.info.metadata["cut_counts"] = {}
    return {split: self._generate_examples(split=split) for split in SPLITS}

  def _generate_examples(self, split: str):
    cfg = self._cfg
    cuts = CutSpec(**dict(cfg.cuts))
    params = dict(cfg.physics_kwargs)
    thresholds = brightness_thresholds(cfg.kinds, seed=cfg.seed, params=params, cuts=cuts,
                                       simulator=cfg.simulator)
    self.info.metadata["brightness_thresholds"] = thresholds
    simulate = SIMULATORS.get(cfg.simulator)
    num = cfg.num_events(split)
    totals: dict[str, dict[str, int]] = {}
    index = 0
    for c in range(-(-num // cfg.chunk_size)):
      n = min(cfg.chunk_size, num - c * cfg.chunk_size)
      beam = cfg.beam_angles_deg[c % len(cfg.beam_angles_deg)]
      ev = simulate(sim.chunk_seed(cfg.seed, _SPLIT_CODE[split], c), n, cfg.kinds,
                    beam_angle_deg=beam, params=params)
      images, passed, counts = clean_chunk(ev, thresholds, cuts)
      for k, v in counts.items():
        totals[k] = readers.merge_counts(totals.get(k, {}), v)
      shift = barycentre.max_shift_nm(images)
      for j in np.flatnonzero(passed):
        yield index, {"image": images[j, :, :, :8], "kind": np.int32(ev["kind"][j]),
                      "num_grains": np.int32(ev["num_grains"][j]),
                      **{k: np.float32(ev[k][j]) for k in (
                          "energy_kev", "direction_deg", "length_nm", "beam_angle_deg")},
                      "bar_shift_nm": np.float32(shift[j])}
        index += 1
    if index == 0:
      raise ValueError(f"newsdm_tfds split {split!r}: no event passed the cleaning cuts")
    self.info.metadata["cut_counts"][split] = totals
    logging.info("newsdm_tfds %s / %s: %s", cfg.name, split,
                 {k: readers.describe(v) for k, v in totals.items()})


def cut_counts(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, dict[str, int]]]:
  """``{split: {kind: cut counts}}`` stored with a prepared dataset."""
  stored = (builder.info.metadata or {}).get("cut_counts")
  if not stored:
    raise ValueError(f"{builder.data_path}: no cut counts in metadata.json")
  return dict(stored)


def build_newsdm_dataset(data_dir: str | os.PathLike, **kwargs: Any) -> NewsdmEvents:
  """Prepares (or reuses) the dataset under ``data_dir``; ``kwargs``: :func:`make_config`."""
  config = make_config(**kwargs)
  return builder_lib.prepare_or_reuse(
      NewsdmEvents(data_dir=os.fspath(data_dir), config=config), log_name="newsdm_tfds")
