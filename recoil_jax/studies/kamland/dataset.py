"""TFDS dataset of KamLAND-Zen-like events as PMT hit lists (array_record, no TensorFlow).

Splits ``train``, ``validation``, ``test``. Each example: ``pmt`` int32 [n], ``time``
float32 [n] (ns), ``charge`` float32 [n] (p.e.), ``vertex`` float32 [3] (m), ``label``
int32 (1 = 0νββ, 0 = ¹⁰C), ``visible_energy`` float32 (MeV), ``direction`` float32 [3]
(unit sum of the ββ momenta; zeros for ¹⁰C and for files). Images are made from these
on the fly by ``source.KamlandSource`` (so one dataset serves every grid and channel set).

Sources of events:

* simulation (default, ``simulator="toy"``): ``sim.simulate_matched`` in chunks of
  ``chunk_per_class`` events per class, each chunk Nhit-matched and seeded from
  ``SeedSequence(seed, spawn_key=(split, chunk))`` — the dataset depends only on the config;
* ``simulator="toy_direction"``: Cherenkov-only 0νββ events (``num_per_class`` of them,
  one class, no matching) for the direction study;
* hit-list files (``hit_files``: split → glob of ``hits.read_hits`` files) with a PMT
  table (``pmt_table``); files are recorded by path, size and modification time.

Config names hash every field (``builder_lib.hashed_name``).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from recoil_jax.data import builder_lib
from recoil_jax.studies.kamland import hits as kamland_hits
from recoil_jax.studies.kamland import sim

SPLITS = ("train", "validation", "test")


def _toy_simulator(seed, num_per_class: int, **kwargs) -> sim.Events:
  return sim.simulate_matched(seed, num_per_class, **kwargs)


def _toy_direction_simulator(seed, num_per_class: int, **kwargs) -> sim.Events:
  return sim.simulate(seed, num_per_class, "0vbb", cherenkov_only=True, **kwargs)


#: ``fn(seed, num_per_class, **sim_kwargs) -> sim.Events`` by name.
SIMULATORS = builder_lib.SimulatorRegistry(
    "kamland_tfds", {"toy": _toy_simulator, "toy_direction": _toy_direction_simulator},
    signature="fn(seed, num_per_class, **kwargs) -> sim.Events")


@dataclasses.dataclass(eq=False)
class KamlandConfig(tfds.core.BuilderConfig):
  num_per_class: tuple = ()  # ((split, n), ...)
  seed: int = 0
  chunk_per_class: int = 500
  simulator: str = "toy"
  sim_kwargs: tuple = ()
  hit_files: tuple = ()  # ((split, pattern), ...)
  files_resolved: tuple = ()


def _resolve(split: str, pattern: str) -> list[str]:
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise FileNotFoundError(f"hit_files[{split!r}]: pattern {pattern!r} matches no file")
  return paths


def make_config(*, num_per_class: Mapping[str, int], seed: int, chunk_per_class: int = 500,
                simulator: str = "toy", sim_kwargs: Mapping[str, Any] | None = None,
                hit_files: Mapping[str, str] | None = None) -> KamlandConfig:
  files = tuple(sorted((k, v) for k, v in (hit_files or {}).items() if v))
  unknown = {k for k, _ in files} - set(SPLITS)
  if unknown:
    raise ValueError(f"hit_files: unknown split(s) {sorted(unknown)}; known {SPLITS}")
  if files and {k for k, _ in files} != set(SPLITS):
    raise ValueError(f"hit_files needs all of {SPLITS}; got {[k for k, _ in files]}")
  if not files:
    SIMULATORS.check(simulator)
  counts = tuple((s, int(num_per_class[s])) for s in SPLITS)
  resolved = tuple((s, builder_lib.file_stamps(_resolve(s, p))) for s, p in files)
  fields = dict(num_per_class=counts, seed=int(seed), chunk_per_class=int(chunk_per_class),
                simulator=simulator if not files else "",
                sim_kwargs=tuple(sorted((sim_kwargs or {}).items())), hit_files=files,
                files_resolved=resolved)
  n = "-".join(str(c) for _, c in counts)
  name = builder_lib.hashed_name(f"{'files' if files else 'sim-' + simulator}-n{n}-s{seed}",
                                 fields)
  return KamlandConfig(name=name, description=f"KamLAND-Zen-like events {fields['num_per_class']}",
                       **fields)


class KamlandHits(tfds.core.GeneratorBasedBuilder):
  """PMT hit lists of 0νββ and ¹⁰C events (KamNet, arXiv 2203.01870)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Toy KamLAND-Zen simulator or hit-list files.",
                   "1.1.0": "True ββ direction; Cherenkov yield as detected p.e.; "
                            "Cherenkov-only direction simulator."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n", 1)[0],
        features=tfds.features.FeaturesDict({
            "pmt": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "time": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "charge": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "vertex": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "label": np.int32,
            "visible_energy": np.float32,
            "direction": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(split=s) for s in SPLITS}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    if cfg.hit_files:
      pattern = dict(cfg.hit_files)[split]
      paths = _resolve(split, pattern)
      builder_lib.check_files_unchanged(f"hit_files[{split!r}]", paths,
                                        dict(cfg.files_resolved)[split], cfg.name)
      num_pmts = dict(cfg.sim_kwargs).get("num_pmts", sim.NUM_PMTS)
      for fi, path in enumerate(paths):
        yield from _emit(kamland_hits.read_hits(path, num_pmts), f"{fi}")
      return
    n = dict(cfg.num_per_class)[split]
    simulate = SIMULATORS.get(cfg.simulator)
    code = SPLITS.index(split)
    for chunk in range(math.ceil(n / cfg.chunk_per_class)):
      m = min(cfg.chunk_per_class, n - chunk * cfg.chunk_per_class)
      seed = np.random.SeedSequence(cfg.seed, spawn_key=(code, chunk))
      yield from _emit(simulate(seed, m, **dict(cfg.sim_kwargs)), f"{chunk}")


def _emit(events: sim.Events, prefix: str):
  for i in range(len(events)):
    e = events.event(i)
    yield f"{prefix}:{i}", {"pmt": e["pmt"].astype(np.int32), "time": e["time"],
                            "charge": e["charge"], "vertex": events.vertex[i],
                            "label": np.int32(events.label[i]),
                            "visible_energy": np.float32(events.visible_energy[i]),
                            "direction": events.direction[i].astype(np.float32)}


def build_kamland_dataset(data_dir: str, **kwargs) -> KamlandHits:
  """Prepares (or reuses) the dataset under ``data_dir``; kwargs as :func:`make_config`."""
  builder = KamlandHits(data_dir=os.fspath(data_dir), config=make_config(**kwargs))
  return builder_lib.prepare_or_reuse(builder, log_name="kamland_tfds")
