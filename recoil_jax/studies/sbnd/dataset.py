"""TFDS dataset of SBND wire-plane events (arXiv 2012.01301), array_record, no TensorFlow.

Splits ``train``, ``validation``, ``test``. Events come from

* simulation (default): ``recoil_jax.studies.sbnd.sim.simulate_sbnd_events`` in chunks of
  ``chunk_size`` events; chunk ``c`` of split ``s`` is simulated with the seed
  :func:`chunk_seed(seed, s, c) <chunk_seed>`, so the dataset depends only on the config
  (and can be re-simulated to check it). Other simulators: :func:`register_simulator`
  (``SIMULATORS``, a ``builder_lib.SimulatorRegistry``).
* CosmicTagger larcv3 files (``files={split: [path or glob, ...]}``): read with
  ``larcv.iter_cosmictagger`` (``downsample``: one factor, (rows, columns), or 0 for the
  factors that give ``height`` x ``width``; ``threshold``), with the neutrino truth when
  the files hold ``particle_sbndneutrino`` / ``cluster2d_sbndneutrino`` (else interaction
  -1, energy nan). ``num_*`` > 0 cap the events read per split (0: all). Splits without
  files are not built (warning).

Each example is one event, stored sparsely: ``pixels`` int32 [n] flat indices into the
event's [3, H, W] grid (plane-major: plane = pixel // (H·W), row = drift, column = wire),
sorted; ``values`` float32 [n] and ``labels`` uint8 [n] at those pixels; the truth of
``sbnd.sim.SbndEvents`` (``TRUTH_FEATURES``): ``interaction`` int32 (index into
``sbnd.sim.INTERACTIONS``, -1 unknown), ``neutrino_energy_gev`` float32 (GeV),
``neutrino_pdg``, ``current_type``, ``interaction_mode`` int32, ``vertex_cm`` float32 [3],
``vertex_pixel`` float32 [3, 2] (per plane (row, column) at this resolution); and where the
event came from: ``file_index`` int32 (index into ``metadata["files"][split]``; -1 for
simulation), ``entry`` int64 (row in that file; simulation: index in the split),
``event_id`` int64 [3] (run, subrun, event; simulation: (split code, chunk, event in
chunk), which re-simulates it with :func:`chunk_seed`).
Stored pixels are the non-zero image pixels plus labelled pixels whose value is zero
(charge below threshold still carries truth), so images and labels round-trip exactly
(``sbnd.source.densify``). H and W are in the config and in ``metadata.json``. Examples
are stored in event order (no shuffling on write): example i of a simulated split is event
i % chunk_size of chunk i // chunk_size.

Per-split occupancy (events per interaction, mean active / cosmic / neutrino pixels per
plane) is stored in the metadata (:func:`split_stats`); for simulated data these are
simulated numbers.

The config name encodes sizes, resolution and seed plus a hash of every field (for files,
of the paths, sizes and modification times; ``builder_lib.hashed_name``); files changed
after the config was made are refused at build time. Atomicity and leftovers of killed
builds: see ``recoil_jax.data.builder_lib`` (:func:`build_sbnd_dataset` warns about
``incomplete.*`` folders).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from recoil_jax.data import builder_lib
from recoil_jax.studies.sbnd import larcv

SPLITS = ("train", "validation", "test")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
NUM_PLANES = 3
NUM_INTERACTIONS = 4  # len(sbnd.sim.INTERACTIONS)
# Per-event truth features: name -> (dtype, shape) (``sbnd.sim.SbndEvents`` fields).
TRUTH_FEATURES = {"interaction": (np.int32, ()), "neutrino_energy_gev": (np.float32, ()),
                  "neutrino_pdg": (np.int32, ()), "current_type": (np.int32, ()),
                  "interaction_mode": (np.int32, ()), "vertex_cm": (np.float32, (3,)),
                  "vertex_pixel": (np.float32, (NUM_PLANES, 2)),
                  "entry": (np.int64, ()), "event_id": (np.int64, (3,))}
SOURCE_FEATURES = {"file_index": (np.int32, ())}

def _lartpc_simulator(seed: int, num_events: int, **kwargs):
  try:
    from recoil_jax.studies.sbnd import sim as lartpc  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("sbnd_tfds: simulator 'lartpc' needs recoil_jax.studies.sbnd.sim, which "
                      "failed to import") from e
  return lartpc.simulate_sbnd_events(seed, num_events, **kwargs)


#: The SBND simulators: ``fn(seed, num_events, *, height, width, interaction_fractions,
#: **physics_kwargs) -> sbnd.sim.SbndEvents`` (the signature of ``simulate_sbnd_events``),
#: by the name a config records.
SIMULATORS = builder_lib.SimulatorRegistry(
    "sbnd_tfds", {"lartpc": _lartpc_simulator},
    signature="fn(seed, num_events, *, height, width, interaction_fractions, **physics) -> "
              "SbndEvents")
#: ``register_simulator(name, fn)``: makes ``fn`` usable as ``simulator=name``.
register_simulator = SIMULATORS.register


def chunk_seed(seed: int, split: str, chunk: int) -> int:
  """Simulator seed of chunk ``chunk`` (events [chunk·chunk_size, ...)) of ``split``."""
  return int(np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_CODE[split], int(chunk)))
             .generate_state(1, np.uint32)[0])


def sparsify(image: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
  """Sparse form of one event: pixels where ``image != 0`` or ``label != 0``.

  Args:
    image: float32 [3, H, W]; label: integer [3, H, W] in {0, 1, 2}.

  Returns:
    ``pixels`` int32 [n] (flat, plane-major, sorted), ``values`` float32 [n], ``labels``
    uint8 [n].
  """
  image = np.asarray(image, np.float32)
  label = np.asarray(label)
  flat = np.flatnonzero((image != 0) | (label != 0))
  return {"pixels": flat.astype(np.int32), "values": image.reshape(-1)[flat],
          "labels": label.reshape(-1)[flat].astype(np.uint8)}


@dataclasses.dataclass(eq=False)
class SbndConfig(tfds.core.BuilderConfig):
  """Sizes, resolution and source of one SBND dataset; build it with :func:`make_config`."""

  num_train: int = 0
  num_validation: int = 0
  num_test: int = 0
  height: int = 640
  width: int = 1024
  seed: int = 0
  chunk_size: int = 8
  simulator: str = "lartpc"
  interaction_fractions: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
  # ((key, value), ...) passed to the simulator.
  physics_kwargs: tuple = ()
  # ((split, (pattern, ...)), ...); empty: simulation.
  files: tuple = ()
  # ((split, ((path, size, mtime_ns), ...)), ...): the resolved files, for the hash.
  files_resolved: tuple = ()
  # Pooling of files: (rows, columns) factors; (0, 0): from the file size and height x width.
  downsample: tuple = (2, 2)
  threshold: float | None = None

  def num_events(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}[split]


def _resolve(split: str, patterns: Sequence[str]) -> list[str]:
  paths = []
  for pattern in patterns:
    pattern = os.path.expanduser(os.fspath(pattern))
    found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
        [pattern] if os.path.isfile(pattern) else [])
    if not found:
      raise FileNotFoundError(f"files[{split!r}]: {pattern!r} matches no file")
    paths += [os.path.abspath(p) for p in found]
  dup = sorted({p for p in paths if paths.count(p) > 1})
  if dup:
    raise ValueError(f"files[{split!r}]: file(s) listed more than once: {dup}")
  return paths


def make_config(*, num_train: int, num_validation: int, num_test: int, height: int, width: int,
                seed: int, files: Mapping[str, Sequence[str] | str] | None = None,
                chunk_size: int = 8, simulator: str = "lartpc",
                interaction_fractions: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
                physics_kwargs: Mapping[str, Any] | None = None,
                downsample: int | Sequence[int] = 2,
                threshold: float | None = None) -> SbndConfig:
  """An :class:`SbndConfig` whose name encodes sizes and resolution and hashes every field."""
  if height < 1 or width < 1 or chunk_size < 1:
    raise ValueError(f"need height, width, chunk_size >= 1; got height={height}, "
                     f"width={width}, chunk_size={chunk_size}")
  factors = (0, 0) if np.ndim(downsample) == 0 and int(downsample) == 0 else (
      larcv.factors_of(downsample))
  if NUM_PLANES * height * width >= 2**31:
    raise ValueError(f"{NUM_PLANES}x{height}x{width} pixels do not fit int32 pixel indices")
  if min(num_train, num_validation, num_test) < 0:
    raise ValueError(f"num_train/num_validation/num_test must be >= 0, got {num_train}, "
                     f"{num_validation}, {num_test}")
  fractions = tuple(float(x) for x in interaction_fractions)
  if (len(fractions) != NUM_INTERACTIONS or min(fractions) < 0
      or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)):
    raise ValueError(f"interaction_fractions must be {NUM_INTERACTIONS} non-negative numbers "
                     f"summing to 1, got {interaction_fractions!r}")
  physics = tuple(sorted((physics_kwargs or {}).items()))
  spec, resolved = (), ()
  if files:
    unknown = set(files) - set(SPLITS)
    if unknown:
      raise ValueError(f"files: unknown split key(s) {sorted(unknown)}; known: {list(SPLITS)}")
    spec = tuple((s, tuple([files[s]] if isinstance(files[s], (str, os.PathLike))
                           else [os.fspath(p) for p in files[s]]))
                 for s in SPLITS if s in files)
    resolved = tuple((s, builder_lib.file_stamps(_resolve(s, patterns)))
                     for s, patterns in spec)
  else:
    SIMULATORS.check(simulator)
    if min(num_train, num_validation, num_test) < 1:
      raise ValueError(f"simulation needs num_train, num_validation, num_test >= 1, got "
                       f"{num_train}, {num_validation}, {num_test}")
  fields = dict(num_train=int(num_train), num_validation=int(num_validation),
                num_test=int(num_test), height=int(height), width=int(width), seed=int(seed),
                chunk_size=int(chunk_size), simulator="" if spec else simulator,
                interaction_fractions=() if spec else fractions,
                physics_kwargs=() if spec else physics, files=spec, files_resolved=resolved,
                downsample=factors if spec else (0, 0),
                threshold=(None if threshold is None else float(threshold)) if spec else None)
  kind = "files" if spec else f"sim-{simulator}"
  name = builder_lib.hashed_name(
      f"{kind}-n{num_train}-v{num_validation}-t{num_test}-{height}x{width}-s{seed}", fields)
  source = "CosmicTagger larcv3 files" if spec else f"simulator {simulator!r} (simulated)"
  description = (f"{source}; {num_train}/{num_validation}/{num_test} train/validation/test "
                 f"events of 3x{height}x{width}")
  return SbndConfig(name=name, description=description, **fields)


class SbndWireImages(tfds.core.GeneratorBasedBuilder):
  """Three SBND wire-plane images per event with per-pixel labels (arXiv 2012.01301)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Sparse wire-plane events: toy simulator or CosmicTagger files.",
                   "1.1.0": "Neutrino truth (PDG, CC/NC, mode, vertex) and file / entry / "
                            "event id per example."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n", 1)[0],
        features=tfds.features.FeaturesDict({
            "pixels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "values": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            **{k: (tfds.features.Tensor(shape=shape, dtype=dt) if shape else dt)
               for k, (dt, shape) in {**TRUTH_FEATURES, **SOURCE_FEATURES}.items()},
        }),
        metadata=tfds.core.MetadataDict(),
        # Example i of a split is event i of its stream (re-simulable from chunk_seed);
        # training shuffles in the input pipeline.
        disable_shuffling=True,
    )

  @property
  def _cfg(self) -> SbndConfig:
    return self.builder_config  # type: ignore[return-value]

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self._cfg
    self.info.metadata["config"] = {
        "num_train": cfg.num_train, "num_validation": cfg.num_validation,
        "num_test": cfg.num_test, "height": cfg.height, "width": cfg.width, "seed": cfg.seed,
        "chunk_size": cfg.chunk_size,
        "source": "files" if cfg.files else f"simulator:{cfg.simulator}",
        "interaction_fractions": list(cfg.interaction_fractions),
        "physics_kwargs": {k: repr(v) for k, v in cfg.physics_kwargs},
        "downsample": list(cfg.downsample), "threshold": cfg.threshold,
    }
    self.info.metadata["stats"] = {}
    if cfg.files:
      for split, patterns in cfg.files:
        builder_lib.check_files_unchanged(f"files[{split!r}]", _resolve(split, patterns),
                                          dict(cfg.files_resolved)[split], cfg.name)
      self.info.metadata["files"] = {s: [p for p, _, _ in r] for s, r in cfg.files_resolved}
      splits = [s for s in SPLITS if s in dict(cfg.files)]
      for s in SPLITS:
        if s not in splits:
          logging.warning("sbnd_tfds: files has no %r: that split is not built", s)
    else:
      splits = list(SPLITS)
    return {split: self._generate_examples(split=split) for split in splits}

  def _generate_examples(self, split: str):
    cfg = self._cfg
    if cfg.files:
      chunks = self._from_files(split, [p for p, _, _ in dict(cfg.files_resolved)[split]])
    else:
      chunks = self._simulated(split)
    stats = _Stats()
    self._empty_by_file: dict[str, list[int]] = {}
    index = 0
    for where, file_index, events in chunks:
      _check_events(events, cfg.height, cfg.width, where)
      for j in range(len(events.interaction)):
        ex = sparsify(events.images[j], events.labels[j])
        for name, (dtype, _) in TRUTH_FEATURES.items():
          ex[name] = np.asarray(getattr(events, name)[j], dtype)
        ex["file_index"] = np.int32(file_index)
        if file_index < 0:  # Simulation: the event's place in its split.
          ex["entry"] = np.int64(index)
        stats.add(events.images[j], events.labels[j], int(events.interaction[j]))
        yield index, ex
        index += 1
    if index == 0:
      raise ValueError(f"sbnd_tfds split {split!r}: no event")
    summary = stats.as_dict()
    if cfg.files:  # Events with no image voxel (kept as all-zero images), per file.
      summary["empty_events"] = sum(len(v) for v in self._empty_by_file.values())
      summary["empty_entries_by_file"] = dict(self._empty_by_file)
    self.info.metadata["stats"][split] = summary
    logging.info("sbnd_tfds %s / %s: %s", cfg.name, split, summary)

  def _simulated(self, split: str) -> Iterator[tuple[str, Any]]:
    cfg = self._cfg
    simulate = SIMULATORS.get(cfg.simulator)
    num = cfg.num_events(split)
    for chunk in range(math.ceil(num / cfg.chunk_size)):
      n = min(cfg.chunk_size, num - chunk * cfg.chunk_size)
      events = simulate(chunk_seed(cfg.seed, split, chunk), n, height=cfg.height,
                        width=cfg.width, interaction_fractions=cfg.interaction_fractions,
                        **dict(cfg.physics_kwargs))
      if len(events.interaction) != n:
        raise ValueError(f"simulator {cfg.simulator!r} returned {len(events.interaction)} "
                         f"events for {n}")
      ids = np.stack([np.full(n, _SPLIT_CODE[split]), np.full(n, chunk), np.arange(n)], axis=1)
      yield (f"simulator {cfg.simulator!r}, split {split!r}, chunk {chunk}", -1,
             dataclasses.replace(events, event_id=ids))

  def _from_files(self, split: str, paths: Sequence[str]) -> Iterator[tuple[str, Any]]:
    cfg = self._cfg
    cap = cfg.num_events(split)
    seen = 0
    auto = tuple(cfg.downsample) == (0, 0)
    for file_index, path in enumerate(paths):
      if cap and seen >= cap:
        break
      stop = None if not cap else cap - seen
      read = larcv.ReadStats()
      for events in larcv.iter_cosmictagger(
          path, downsample=1 if auto else tuple(cfg.downsample),
          size=(cfg.height, cfg.width) if auto else None, threshold=cfg.threshold, stop=stop,
          chunk_size=cfg.chunk_size, stats=read):
        seen += len(events.interaction)
        yield f"{path}", file_index, events
      if read.num_empty:
        self._empty_by_file[path] = [int(e) for e in read.empty_entries]


def _check_events(events, height: int, width: int, where: str) -> None:
  """Shapes, dtypes and label values of a batch of events before it is stored."""
  n = len(events.interaction)
  shape = (n, NUM_PLANES, height, width)
  if events.images.shape != shape:
    raise ValueError(f"{where}: images have shape {events.images.shape}, the dataset expects "
                     f"{shape} (height={height}, width={width})")
  if events.labels.shape != shape:
    raise ValueError(f"{where}: labels have shape {events.labels.shape}, expected {shape}")
  if events.images.dtype != np.float32:
    raise ValueError(f"{where}: images dtype {events.images.dtype}, expected float32")
  if not np.isin(events.labels, (0, 1, 2)).all():
    raise ValueError(f"{where}: label values outside {{0, 1, 2}}")
  if np.asarray(events.neutrino_energy_gev).shape != (n,):
    raise ValueError(f"{where}: neutrino_energy_gev shape "
                     f"{np.asarray(events.neutrino_energy_gev).shape}, expected ({n},)")
  inter = np.asarray(events.interaction)
  if ((inter < -1) | (inter >= NUM_INTERACTIONS)).any():
    raise ValueError(f"{where}: interaction codes outside -1..{NUM_INTERACTIONS - 1}")


class _Stats:
  """Events per interaction and mean pixel counts per plane of one split."""

  def __init__(self):
    self.events = 0
    self.per_interaction = np.zeros(NUM_INTERACTIONS + 1, np.int64)  # last: unknown (-1)
    self.active = 0
    self.cosmic = 0
    self.neutrino = 0

  def add(self, image: np.ndarray, label: np.ndarray, interaction: int) -> None:
    self.events += 1
    self.per_interaction[interaction] += 1
    self.active += int(np.count_nonzero(image))
    self.cosmic += int(np.count_nonzero(label == 1))
    self.neutrino += int(np.count_nonzero(label == 2))

  def as_dict(self) -> dict[str, Any]:
    per_plane = max(1, self.events * NUM_PLANES)
    return {"events": self.events,
            "events_per_interaction": [int(x) for x in self.per_interaction[:-1]],
            "events_unknown_interaction": int(self.per_interaction[-1]),
            "mean_active_pixels_per_plane": self.active / per_plane,
            "mean_cosmic_pixels_per_plane": self.cosmic / per_plane,
            "mean_neutrino_pixels_per_plane": self.neutrino / per_plane}


def split_stats(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, Any]]:
  """Per-split event and pixel counts stored with a prepared dataset."""
  stored = builder.info.metadata.get("stats") if builder.info.metadata else None
  if not stored:
    raise ValueError(f"{builder.data_path}: no stats in metadata.json (not prepared, or not "
                     "built by SbndWireImages)")
  return dict(stored)


def build_sbnd_dataset(
    data_dir: str | os.PathLike,
    *,
    num_train: int,
    num_validation: int,
    num_test: int,
    height: int,
    width: int,
    seed: int,
    files: Mapping[str, Sequence[str] | str] | None = None,
    chunk_size: int = 8,
    simulator: str = "lartpc",
    interaction_fractions: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
    physics_kwargs: Mapping[str, Any] | None = None,
    downsample: int | Sequence[int] = 2,
    threshold: float | None = None,
) -> SbndWireImages:
  """Prepares (or reuses) the SBND dataset under ``data_dir`` and returns its builder.

  Args:
    data_dir: root folder; the dataset lands in
      ``data_dir/sbnd_wire_images/<config name>/1.0.0``.
    num_train, num_validation, num_test: events simulated per split; with files, caps on
      the events read (0: all).
    height, width: image size per plane (drift rows, wire columns); files must give
      exactly this after ``downsample``.
    seed: seeds the simulation.
    files: split -> list of larcv3 paths or globs (CosmicTagger format); None: simulate.
    chunk_size: events simulated / read at once (enters the seeds, hence the hash).
    simulator: registered simulator name (:func:`register_simulator`).
    interaction_fractions: fractions of cosmic_only, nue_cc, numu_cc, nc events.
    physics_kwargs: extra keyword arguments of the simulator.
    downsample: for files, the pooling factor of both axes, (rows, columns), or 0: the
      factors giving height x width from the files' size (``larcv.iter_cosmictagger``).
    threshold: for files, see ``larcv.iter_cosmictagger``.

  Returns:
    The prepared builder: ``builder.as_data_source(split)`` for reading (see
    ``sbnd.source.SbndSource``), :func:`split_stats` for occupancies.
  """
  config = make_config(num_train=num_train, num_validation=num_validation, num_test=num_test,
                       height=height, width=width, seed=seed, files=files,
                       chunk_size=chunk_size, simulator=simulator,
                       interaction_fractions=interaction_fractions,
                       physics_kwargs=physics_kwargs, downsample=downsample,
                       threshold=threshold)
  return builder_lib.prepare_or_reuse(
      SbndWireImages(data_dir=os.fspath(data_dir), config=config), log_name="sbnd_tfds")
