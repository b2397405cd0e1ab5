"""TFDS dataset of voxelised TPC electron recoils (arXiv 2403.15949), array_record, no TF.

Splits:

* ``train`` and ``validation``: 80/20 of one pool of ``num_train_val`` events, energies
  cycling through ``energies_kev`` (the paper: 40, 45, 50 keV), σ ~ U(``sigma_range_um``).
* ``test_40keV_200um`` and ``test_50keV_443um``: ``num_test`` events each, fixed energy and σ.

Each example: ``coords`` uint8 [n, 3] voxel indices (x, y, z) in [0, 120), ``charges``
float32 [n] electrons per voxel, ``direction`` float32 [3] (label), ``energy_kev`` and
``sigma_um`` float32. Preprocessing: ``tpc_preprocess.preprocess_tracks``; discarded tracks
are counted per split, logged, and stored in the dataset's ``metadata.json``
(:func:`discard_counts`). Numbers of events are numbers *simulated* (or read); the splits
hold the kept ones.

Sources of tracks:

* Simulation (default): ``recoil_jax.physics.electron_recoils.simulate_electron_recoils`` in
  chunks of ``chunk_size`` events, then vectorised preprocessing per chunk. Train and
  validation are simulated as two disjoint seeded streams (the pool's first 80 % and last
  20 %; events are i.i.d., so this is a random 80/20 split). Every chunk has its own seeds
  from ``np.random.SeedSequence(seed, spawn_key=(split, chunk, ...))``: the dataset depends
  only on the config. Other simulators can be registered with :func:`register_simulator`
  (``SIMULATORS``, a ``builder_lib.SimulatorRegistry``).
* DEGRAD-format files (``degrad_files``): per split a glob (or a ``{energy_keV: glob}``
  mapping) read with ``degrad.read_electron_file``. Keys: ``train_val`` (one pool,
  each event goes to validation with probability 0.2, seeded) or both ``train`` and
  ``validation``; optionally ``test_40keV_200um`` / ``test_50keV_443um`` (missing test splits
  are not built, with a warning). The energy of a train/validation file comes from its
  mapping key or from its name (``..._40keV...``); test files take the split's energy.
  ``num_train_val`` / ``num_test`` > 0 cap the events read (sorted file order).

The config name encodes the sizes plus a hash of every field (and, for files, of the paths,
sizes and modification times), so different datasets never share a directory
(``builder_lib.hashed_name``); files changed after the config was made are refused at
build time. Atomicity and leftovers of killed builds: see ``recoil_jax.data.builder_lib``
(:func:`build_tpc_dataset` warns about ``incomplete.*`` folders).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from recoil_jax.data import builder_lib
from recoil_jax.studies.tpc import degrad
from recoil_jax.studies.tpc import preprocess as tpc_preprocess

TEST_SPLITS: dict[str, tuple[float, float]] = {
    # split name: (energy in keV, fixed σ in µm); the paper's pairing (Figure 6).
    "test_40keV_200um": (40.0, 200.0),
    "test_50keV_443um": (50.0, 443.0),
}
SPLITS = ("train", "validation") + tuple(TEST_SPLITS)
TRAIN_FRACTION = 0.8
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
_ENERGY_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*_?kev", re.IGNORECASE)

def _electron_recoil_simulator(seed: int, energies_kev: np.ndarray, **physics):
  """``sim.simulate_electron_recoils``; ``physics``: its optional switches (SIM_PHYSICS_KEYS)."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from recoil_jax.physics import electron_recoils as electron_recoil
  except ImportError as e:
    raise ImportError("tpc_tfds: simulator 'electron_recoil' needs "
                      "recoil_jax.physics.electron_recoils, which failed to import") from e
  recoils = electron_recoil.simulate_electron_recoils(
      seed, np.asarray(energies_kev, np.float64), **physics)
  return np.asarray(recoils.positions_mm), np.asarray(recoils.num_electrons)


#: Optional physics of the 'electron_recoil' simulator (``sim.simulate_electron_recoils``
#: keyword arguments): the three switches, the δ-ray cut they share, and the elastic
#: cross-section scale (a sensitivity knob; 1 = the screened-Rutherford model).
SIM_PHYSICS_SWITCHES = ("delta_rays", "straggling", "electron_spread")
SIM_PHYSICS_KEYS = SIM_PHYSICS_SWITCHES + ("delta_cut_kev", "elastic_scale")


def _normalise_sim_physics(sim_physics: Mapping[str, Any] | None) -> tuple:
  """``((key, value), ...)`` of the switches that are on (+ the cut) and of an elastic scale
  other than 1; () when all switches are off and the scale is 1.

  Empty then whatever the cut: such a dataset is the one made before these options existed,
  and its name (hash) stays the same (likewise the scale enters only when it is not 1).
  """
  if not sim_physics:
    return ()
  unknown = set(sim_physics) - set(SIM_PHYSICS_KEYS)
  if unknown:
    raise ValueError(f"sim_physics: unknown key(s) {sorted(unknown)}; known: "
                     f"{list(SIM_PHYSICS_KEYS)}")
  scale = float(sim_physics.get("elastic_scale", 1.0))
  if not (math.isfinite(scale) and scale > 0):
    raise ValueError(f"sim_physics.elastic_scale must be finite and > 0, got {scale}")
  scaled = (("elastic_scale", scale),) if scale != 1.0 else ()
  on = tuple((k, True) for k in SIM_PHYSICS_SWITCHES if bool(sim_physics.get(k, False)))
  if not on:
    return scaled
  cut = float(sim_physics.get("delta_cut_kev", 1.0))
  if not cut > 0:
    raise ValueError(f"sim_physics.delta_cut_kev must be > 0, got {cut}")
  return tuple(sorted(on + (("delta_cut_kev", cut),) + scaled))


#: The TPC simulators: ``fn(seed, energies_kev [N]) -> (positions_mm [N, E, 3],
#: num_electrons [N])``, by the name a config records.
SIMULATORS = builder_lib.SimulatorRegistry(
    "tpc_tfds", {"electron_recoil": _electron_recoil_simulator},
    signature="fn(seed, energies_kev) -> (positions_mm [N, E, 3], num_electrons [N])")
#: ``register_simulator(name, fn)``: makes ``fn`` usable as ``simulator=name``.
register_simulator = SIMULATORS.register


@dataclasses.dataclass(eq=False)
class TpcTracksConfig(tfds.core.BuilderConfig):
  """Sizes and sources of one TPC dataset; build it with :func:`make_config`."""

  num_train_val: int = 0
  num_test: int = 0
  energies_kev: tuple[float, ...] = (40.0, 45.0, 50.0)
  sigma_range_um: tuple[float, float] = (160.0, 466.0)
  max_voxels: int = 0
  seed: int = 0
  chunk_size: int = 1000
  simulator: str = "electron_recoil"
  # ((split, ((energy_kev or None, pattern), ...)), ...); empty: simulation.
  degrad_files: tuple = ()
  # ((key, value), ...) for degrad.read_electron_file (unit, tree, branches).
  degrad_reader_kwargs: tuple = ()
  # ((split, ((path, size, mtime_ns), ...)), ...): the resolved files, for the hash.
  degrad_resolved: tuple = ()
  # ((key, value), ...): optional simulator physics that is on (_normalise_sim_physics);
  # () = none (then not part of the hash, so older datasets keep their names).
  sim_physics: tuple = ()


def _normalise_degrad_files(degrad_files: Mapping[str, Any]) -> tuple:
  known = {"train_val", "train", "validation", *TEST_SPLITS}
  unknown = set(degrad_files) - known
  if unknown:
    raise ValueError(f"degrad_files: unknown split key(s) {sorted(unknown)}; known: "
                     f"{sorted(known)}")
  has_pool = "train_val" in degrad_files
  has_pair = "train" in degrad_files or "validation" in degrad_files
  if has_pool == has_pair or (has_pair and not {"train", "validation"} <= set(degrad_files)):
    raise ValueError("degrad_files needs either 'train_val' or both 'train' and 'validation'; "
                     f"got keys {sorted(degrad_files)}")
  out = []
  for split in sorted(degrad_files):
    spec = degrad_files[split]
    if isinstance(spec, (str, os.PathLike)):
      entries = ((None, os.fspath(spec)),)
    elif isinstance(spec, Mapping):
      entries = tuple(sorted((float(e), os.fspath(p)) for e, p in spec.items()))
    else:
      raise ValueError(f"degrad_files[{split!r}] must be a glob string or an "
                       f"{{energy_keV: glob}} mapping, got {type(spec).__name__}")
    out.append((split, entries))
  return tuple(out)


def _resolve_files(split: str, entries: tuple) -> list[tuple[str, float]]:
  """Sorted (path, energy_kev) of one split's patterns; errors name the split and pattern."""
  files = []
  for energy, pattern in entries:
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
      raise FileNotFoundError(f"degrad_files[{split!r}]: pattern {pattern!r} matches no file")
    for p in paths:
      e = energy
      if e is None and split in TEST_SPLITS:
        e = TEST_SPLITS[split][0]
      if e is None:
        m = _ENERGY_IN_NAME.findall(os.path.basename(p))
        if len(set(m)) != 1:
          raise ValueError(
              f"degrad_files[{split!r}]: cannot tell the energy of {p!r} from its name "
              f"(found {m or 'no'} '<E>keV'); give {{energy_keV: glob}} instead")
        e = float(m[0])
      files.append((os.path.abspath(p), float(e)))
  paths = [p for p, _ in files]
  dup = sorted({p for p in paths if paths.count(p) > 1})
  if dup:
    raise ValueError(f"degrad_files[{split!r}]: file(s) matched more than once: {dup}")
  return files


def make_config(*, num_train_val: int, num_test: int, max_voxels: int, seed: int,
                energies_kev: Sequence[float] = (40.0, 45.0, 50.0),
                sigma_range_um: Sequence[float] = (160.0, 466.0),
                degrad_files: Mapping[str, Any] | None = None,
                degrad_reader_kwargs: Mapping[str, Any] | None = None,
                chunk_size: int = 1000,
                simulator: str = "electron_recoil",
                sim_physics: Mapping[str, Any] | None = None) -> TpcTracksConfig:
  """A :class:`TpcTracksConfig` whose name encodes the sizes and hashes every field.

  ``sim_physics``: optional physics of the 'electron_recoil' simulator
  (``SIM_PHYSICS_KEYS``); it enters the hash only when a switch is on.
  """
  energies = tuple(float(e) for e in energies_kev)
  sigma_range = tuple(float(s) for s in sigma_range_um)
  if not energies or any(not (e > 0) for e in energies):
    raise ValueError(f"energies_kev must be positive, got {energies_kev!r}")
  if len(sigma_range) != 2 or not 0 <= sigma_range[0] <= sigma_range[1]:
    raise ValueError(f"sigma_range_um must be (low, high) with 0 <= low <= high, got "
                     f"{sigma_range_um!r}")
  if max_voxels < 1 or chunk_size < 1 or num_train_val < 0 or num_test < 0:
    raise ValueError(f"need max_voxels >= 1, chunk_size >= 1, num_* >= 0; got "
                     f"max_voxels={max_voxels}, chunk_size={chunk_size}, "
                     f"num_train_val={num_train_val}, num_test={num_test}")
  files, resolved, reader_kw = (), (), ()
  physics = _normalise_sim_physics(sim_physics)
  if physics and (degrad_files or simulator != "electron_recoil"):
    raise ValueError("sim_physics applies to the 'electron_recoil' simulator only (got "
                     + ("DEGRAD files" if degrad_files else f"simulator {simulator!r}")
                     + f" with {dict(physics)})")
  if degrad_files:
    files = _normalise_degrad_files(degrad_files)
    reader_kw = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                             for k, v in (degrad_reader_kwargs or {}).items()))
    unknown = {k for k, _ in reader_kw} - {"unit", "tree", "branches"}
    if unknown:
      raise ValueError(f"degrad_reader_kwargs: unknown key(s) {sorted(unknown)}; known: "
                       "unit, tree, branches")
    resolved = tuple(
        (split, builder_lib.file_stamps([p for p, _ in _resolve_files(split, entries)]))
        for split, entries in files)
  else:
    SIMULATORS.check(simulator)
    if num_train_val < 2 or num_test < 1:
      raise ValueError(f"simulation needs num_train_val >= 2 and num_test >= 1, got "
                       f"{num_train_val}, {num_test}")
  fields = dict(num_train_val=int(num_train_val), num_test=int(num_test), energies_kev=energies,
                sigma_range_um=sigma_range, max_voxels=int(max_voxels), seed=int(seed),
                chunk_size=int(chunk_size), simulator=simulator if not files else "",
                degrad_files=files, degrad_reader_kwargs=reader_kw, degrad_resolved=resolved)
  if physics:  # Only then: with all switches off the hash is that of before.
    fields["sim_physics"] = physics
  kind = "degrad" if files else f"sim-{simulator}"
  name = builder_lib.hashed_name(
      f"{kind}-n{num_train_val}-t{num_test}-v{max_voxels}-s{seed}", fields)
  source = "DEGRAD-format files" if files else f"simulator {simulator!r}"
  if physics:
    source += f" with {dict(physics)}"
  description = (f"{source}; {num_train_val} train+val events at {energies} keV, σ ~ U"
                 f"{sigma_range} µm; {num_test} events per test set; max_voxels {max_voxels}")
  return TpcTracksConfig(name=name, description=description, **fields)


class TpcTracks(tfds.core.GeneratorBasedBuilder):
  """Voxelised electron recoils for direction reconstruction (arXiv 2403.15949)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The paper's preprocessing; simulated or DEGRAD-file tracks."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n", 1)[0],
        features=tfds.features.FeaturesDict({
            "coords": tfds.features.Tensor(shape=(None, 3), dtype=np.uint8),
            "charges": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "direction": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "energy_kev": np.float32,
            "sigma_um": np.float32,
        }),
        metadata=tfds.core.MetadataDict(),
    )

  @property
  def _cfg(self) -> TpcTracksConfig:
    return self.builder_config  # type: ignore[return-value]

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self._cfg
    self.info.metadata["config"] = {
        "num_train_val": cfg.num_train_val, "num_test": cfg.num_test,
        "energies_kev": list(cfg.energies_kev), "sigma_range_um": list(cfg.sigma_range_um),
        "max_voxels": cfg.max_voxels, "seed": cfg.seed, "chunk_size": cfg.chunk_size,
        "source": "degrad_files" if cfg.degrad_files else f"simulator:{cfg.simulator}",
    }
    if cfg.sim_physics:
      self.info.metadata["config"]["sim_physics"] = dict(cfg.sim_physics)
    self.info.metadata["discard_counts"] = {}
    if cfg.degrad_files:
      for split, entries in cfg.degrad_files:
        builder_lib.check_files_unchanged(
            f"degrad_files[{split!r}]", [p for p, _ in _resolve_files(split, entries)],
            dict(cfg.degrad_resolved)[split], cfg.name)
      self.info.metadata["files"] = {
          split: [p for p, _ in _resolve_files(split, entries)]
          for split, entries in cfg.degrad_files}
      specs = dict(cfg.degrad_files)
      splits = ["train", "validation"] + [s for s in TEST_SPLITS if s in specs]
      for split in TEST_SPLITS:
        if split not in specs:
          logging.warning("tpc_tfds: degrad_files has no %r: that split is not built", split)
    else:
      splits = list(SPLITS)
    return {split: self._generate_examples(split=split) for split in splits}

  def _generate_examples(self, split: str):
    """Examples of one split: (key, features) pairs, from simulation or from files."""
    cfg = self._cfg
    if not cfg.degrad_files:
      n_train = int(round(TRAIN_FRACTION * cfg.num_train_val))
      if split == "train":
        return self._simulated(split, n_train, cfg.energies_kev, cfg.sigma_range_um)
      if split == "validation":
        return self._simulated(split, cfg.num_train_val - n_train, cfg.energies_kev,
                               cfg.sigma_range_um)
      energy, sigma = TEST_SPLITS[split]
      return self._simulated(split, cfg.num_test, (energy,), sigma)
    specs = dict(cfg.degrad_files)
    if split in TEST_SPLITS:
      return self._from_files(split, _resolve_files(split, specs[split]), cfg.num_test)
    if "train_val" in specs:
      return self._from_files(split, _resolve_files("train_val", specs["train_val"]),
                              cfg.num_train_val, pool_keep=int(split == "validation"))
    n_train = int(round(TRAIN_FRACTION * cfg.num_train_val))
    cap = n_train if split == "train" else cfg.num_train_val - n_train
    return self._from_files(split, _resolve_files(split, specs[split]),
                            cap if cfg.num_train_val else 0)

  # -- shared -------------------------------------------------------------------------

  def _emit(self, tracks: tpc_preprocess.VoxelisedTracks, keys: Sequence[Any]):
    for j in range(len(tracks)):
      n = int(tracks.num_voxels[j])
      yield keys[j], {
          "coords": tracks.coords[j, :n].astype(np.uint8),
          "charges": tracks.charges[j, :n],
          "direction": tracks.direction[j],
          "energy_kev": tracks.energy_kev[j],
          "sigma_um": tracks.sigma_um[j],
      }

  def _finish(self, split: str, counts: tpc_preprocess.DiscardCounts) -> None:
    self.info.metadata["discard_counts"][split] = counts.as_dict()
    logging.info("tpc_tfds %s / %s: %s", self._cfg.name, split, counts)
    if counts.kept == 0:
      raise ValueError(f"tpc_tfds split {split!r}: no track kept ({counts}); check "
                       "max_voxels and the input tracks")

  # -- simulation -----------------------------------------------------------------------

  def _simulated(self, split: str, num: int, energies: Sequence[float],
                 sigma_um) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    cfg = self._cfg
    simulate = SIMULATORS.get(cfg.simulator)
    code = _SPLIT_CODE[split]
    energies = np.asarray(energies, np.float64)
    counts = tpc_preprocess.DiscardCounts()
    for chunk in range(math.ceil(num / cfg.chunk_size)):
      lo = chunk * cfg.chunk_size
      hi = min(num, lo + cfg.chunk_size)
      energy = energies[np.arange(lo, hi) % len(energies)]
      sim_seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(code, chunk, 0))
                     .generate_state(1, np.uint32)[0])
      positions, num_electrons = simulate(sim_seed, energy, **dict(cfg.sim_physics))
      if len(num_electrons) != hi - lo:
        raise ValueError(f"simulator {cfg.simulator!r} returned {len(num_electrons)} tracks "
                         f"for {hi - lo} energies")
      rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(code, chunk, 1)))
      tracks, c = tpc_preprocess.preprocess_tracks(
          positions, num_electrons, energy, rng, _sigma_arg(sigma_um), cfg.max_voxels)
      counts += c
      logging.info("tpc_tfds %s chunk %d: %s", split, chunk, c)
      yield from self._emit(tracks, [lo + int(i) for i in tracks.source_index])
    self._finish(split, counts)

  # -- DEGRAD-format files ----------------------------------------------------------------

  def _from_files(self, split: str, files: list[tuple[str, float]], cap: int,
                  pool_keep: int | None = None):
    """Reads, (for a pool) assigns to train/validation, preprocesses in chunks.

    ``pool_keep``: None for a dedicated split; 0 (train) or 1 (validation) for the
    train_val pool, where event k of file i goes to validation iff a Bernoulli(0.2) draw
    seeded by (seed, i) says so; ``cap`` then limits the pool, not the split.
    """
    cfg = self._cfg
    reader_kw = dict(cfg.degrad_reader_kwargs)
    code = _SPLIT_CODE[split]
    if split in TEST_SPLITS:
      sigma = TEST_SPLITS[split][1]
    else:
      sigma = _sigma_arg(cfg.sigma_range_um)
    counts = tpc_preprocess.DiscardCounts()
    buf_tracks, buf_energy, buf_keys = [], [], []
    chunk = 0
    pool_seen = 0

    def flush():
      nonlocal chunk
      positions, num_electrons = degrad.stack_tracks(buf_tracks)
      rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(code, chunk, 1)))
      tracks, c = tpc_preprocess.preprocess_tracks(
          positions, num_electrons, np.asarray(buf_energy, np.float32), rng, sigma,
          cfg.max_voxels)
      chunk += 1
      keys = [buf_keys[int(i)] for i in tracks.source_index]
      buf_tracks.clear(), buf_energy.clear(), buf_keys.clear()
      return c, list(self._emit(tracks, keys))

    for file_index, (path, energy) in enumerate(files):
      if cap and pool_seen >= cap:
        break
      events = _read_events(path, reader_kw)
      if cap:
        events = events[:cap - pool_seen]
      pool_seen += len(events)
      if pool_keep is not None:
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(99, file_index)))
        in_val = rng.random(len(events)) < 1.0 - TRAIN_FRACTION
        chosen = np.flatnonzero(in_val == bool(pool_keep))
      else:
        chosen = np.arange(len(events))
      for k in chosen:
        buf_tracks.append(events[k])
        buf_energy.append(energy)
        buf_keys.append(f"{file_index}:{int(k)}")
        if len(buf_tracks) >= cfg.chunk_size:
          c, examples = flush()
          counts += c
          yield from examples
    if buf_tracks:
      c, examples = flush()
      counts += c
      yield from examples
    self._finish(split, counts)


def _read_events(path: str, reader_kw: dict[str, Any]) -> list[np.ndarray]:
  """Reads one file; ``tree``/``branches`` apply to ROOT files only, ``unit`` to all."""
  kw = dict(reader_kw)
  if not path.lower().endswith(degrad.ROOT_SUFFIXES):
    kw = {k: v for k, v in kw.items() if k == "unit"}
  return degrad.read_electron_file(path, **kw)


def _sigma_arg(sigma_um) -> float | tuple[float, float]:
  if isinstance(sigma_um, (tuple, list)):
    lo, hi = sigma_um
    return float(lo), float(hi)
  return float(sigma_um)


def discard_counts(builder: tfds.core.DatasetBuilder) -> dict[str, tpc_preprocess.DiscardCounts]:
  """Per-split discard counts stored with a prepared dataset."""
  stored = builder.info.metadata.get("discard_counts") if builder.info.metadata else None
  if not stored:
    raise ValueError(f"{builder.data_path}: no discard counts in metadata.json (not prepared, "
                     "or not built by TpcTracks)")
  return {s: tpc_preprocess.DiscardCounts.from_dict(d) for s, d in stored.items()}


def build_tpc_dataset(
    data_dir: str,
    *,
    num_train_val: int,
    num_test: int,
    max_voxels: int,
    seed: int,
    energies_kev: Sequence[float] = (40.0, 45.0, 50.0),
    sigma_range_um: Sequence[float] = (160.0, 466.0),
    degrad_files: Mapping[str, Any] | None = None,
    degrad_reader_kwargs: Mapping[str, Any] | None = None,
    chunk_size: int = 1000,
    simulator: str = "electron_recoil",
    sim_physics: Mapping[str, Any] | None = None,
) -> TpcTracks:
  """Prepares (or reuses) the TPC dataset under ``data_dir`` and returns its builder.

  Args:
    data_dir: root folder; the dataset lands in ``data_dir/tpc_tracks/<config name>/1.0.0``.
    num_train_val: events simulated for train+validation (split 80/20); with files, a cap
      on the events read (0: all).
    num_test: events simulated per test set; with files, a cap (0: all).
    max_voxels: tracks with more active voxels are discarded (and counted).
    seed: seeds simulation and preprocessing.
    energies_kev: training energies in keV (cycled through the pool).
    sigma_range_um: training smearing σ range in µm.
    degrad_files: split -> glob (or {energy_keV: glob}); see the module docstring. None:
      simulate.
    degrad_reader_kwargs: ``unit`` (all files; default cm for ROOT, mm otherwise),
      ``tree`` and ``branches`` (ROOT files), see ``degrad.read_electron_file``.
    chunk_size: events simulated/preprocessed at once.
    simulator: name of a registered simulator (:func:`register_simulator`).
    sim_physics: optional physics of the 'electron_recoil' simulator, a mapping with
      keys in ``SIM_PHYSICS_KEYS`` (config ``data.sim_physics``); None or all switches
      off: the simulator as before (same dataset name).

  Returns:
    The prepared builder: ``builder.as_data_source(split)`` for reading,
    :func:`discard_counts(builder) <discard_counts>` for what was dropped.
  """
  config = make_config(num_train_val=num_train_val, num_test=num_test, max_voxels=max_voxels,
                       seed=seed, energies_kev=energies_kev, sigma_range_um=sigma_range_um,
                       degrad_files=degrad_files, degrad_reader_kwargs=degrad_reader_kwargs,
                       chunk_size=chunk_size, simulator=simulator, sim_physics=sim_physics)
  builder = builder_lib.prepare_or_reuse(
      TpcTracks(data_dir=os.fspath(data_dir), config=config), log_name="tpc_tfds")
  for split, counts in discard_counts(builder).items():
    logging.info("tpc_tfds %s: %s", split, counts)
  return builder
