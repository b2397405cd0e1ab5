"""TFDS build, reuse and staleness logic shared by the study datasets (``studies/*/dataset.py``).

A study's dataset module defines its ``tfds.core.GeneratorBasedBuilder`` and a
``make_config`` that turns the study's arguments into a ``BuilderConfig``; everything
around that is here, once:

* :class:`SimulatorRegistry`: the named simulators a study can build from (one registry
  per study; the name enters the config name).
* :func:`hashed_name`: the config name, readable sizes plus a hash of every field
  (:func:`config_digest`), so that different datasets never share a directory.
* :func:`file_stamps` / :func:`check_files_unchanged`: input files recorded by path, size
  and modification time when the config is made, and checked again when it is built.
* :func:`stale_incomplete_dirs`: ``incomplete.*`` folders left by a killed build.
* :func:`prepare_or_reuse`: warns about those, then reuses a prepared dataset or builds
  it (``builder.download_and_prepare``, array_record, no TensorFlow).
* :func:`prepared_splits`: the splits of a prepared dataset, for the study sources.

Atomicity (checked with tfds 4.9.10): tfds writes into ``<config>/incomplete.XXXXXX_<ver>``
and renames it to ``<config>/<ver>`` only after every split and ``dataset_info.json`` are
written. A killed build leaves the ``incomplete.*`` folder behind and no ``<ver>`` folder,
so ``is_prepared()`` stays False and the next build starts afresh (an exception inside the
build removes the folder); :func:`prepare_or_reuse` warns about such leftovers.

No TensorFlow Datasets import here: the functions take builder objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np

from recoil_jax.data import pipeline

#: Characters of the sha256 hex digest kept in a config name.
DIGEST_LENGTH = 10
_SIMULATOR_NAME = re.compile(r"[A-Za-z0-9_]+")
_UNSTABLE_REPR = re.compile(r" at 0x[0-9a-fA-F]+")

# (path, size in bytes, modification time in ns) of one input file.
FileStamp = tuple[str, int, int]


class SimulatorRegistry:
  """Named simulators of one study's dataset; the name is what a config records.

  Each study has one registry (its ``SIMULATORS``) whose functions share that study's
  signature; the registry itself only stores and looks them up. The name enters the
  dataset's config name, so datasets of different simulators never collide.
  """

  def __init__(self, study: str, simulators: Mapping[str, Callable[..., Any]] | None = None,
               *, signature: str = ""):
    """A registry called ``study`` (used in messages) holding ``simulators``.

    Args:
      study: the dataset's name in messages, e.g. ``"<study>_tfds"``.
      simulators: initial ``{name: function}``.
      signature: the simulators' call signature, for :meth:`register`'s errors.
    """
    self.study = study
    self.signature = signature
    self._fns: dict[str, Callable[..., Any]] = {}
    for name, fn in (simulators or {}).items():
      self.register(name, fn)

  def register(self, name: str, fn: Callable[..., Any]) -> None:
    """Makes ``fn`` usable as ``simulator=name`` (replacing an earlier ``name``).

    Raises:
      ValueError: ``name`` is not letters, digits and '_' (it becomes part of a folder
        name), or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not _SIMULATOR_NAME.fullmatch(name):
      raise ValueError(f"{self.study}: simulator name {name!r}: use letters, digits and '_'")
    if not callable(fn):
      raise ValueError(f"{self.study}: simulator {name!r} must be callable"
                       + (f" as {self.signature}" if self.signature else "")
                       + f", got {type(fn).__name__}")
    self._fns[name] = fn

  def get(self, name: str) -> Callable[..., Any]:
    """The simulator registered as ``name``.

    Raises:
      ValueError: ``name`` is not registered; the message lists the registered ones.
    """
    self.check(name)
    return self._fns[name]

  def check(self, name: str) -> None:
    """Raises ValueError ("unknown simulator ...; registered: [...]") unless registered."""
    if name not in self._fns:
      raise ValueError(f"{self.study}: unknown simulator {name!r}; registered: {self.names()}")

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._fns)

  def __contains__(self, name: object) -> bool:
    return name in self._fns

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._fns)

  def __repr__(self) -> str:
    return f"SimulatorRegistry({self.study!r}, {self.names()})"


def _json_default(x: Any) -> Any:
  """How :func:`config_digest` encodes what JSON cannot: numpy as Python values, else repr.

  Raises:
    TypeError: the repr carries a memory address (`` at 0x...``): it would change from
      run to run, so the dataset would never be reused.
  """
  if isinstance(x, np.ndarray):
    return {"ndarray": x.dtype.str, "shape": list(x.shape), "values": x.tolist()}
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (set, frozenset)):
    return sorted(repr(v) for v in x)
  text = repr(x)
  if _UNSTABLE_REPR.search(text):
    raise TypeError(f"config field value {text} has no stable repr (it names a memory "
                    "address), so it cannot enter a dataset's hash; pass plain values")
  return text


def config_digest(fields: Mapping[str, Any], length: int = DIGEST_LENGTH) -> str:
  """The first ``length`` hex characters of sha256 of ``fields`` as canonical JSON.

  Keys are sorted; tuples hash like lists; numpy scalars/arrays by value; any other value
  JSON cannot hold by its ``repr`` (see :func:`_json_default`). The same fields give the
  same digest in every process and on every machine.

  Args:
    fields: the config's fields (``{name: value}``).
    length: digest characters kept, 1..64.
  """
  if not 1 <= length <= 64:
    raise ValueError(f"digest length must be in [1, 64], got {length}")
  text = json.dumps(fields, sort_keys=True, default=_json_default, allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()[:length]


def hashed_name(prefix: str, fields: Mapping[str, Any]) -> str:
  """A config name: ``f"{prefix}-{config_digest(fields)}"``.

  ``prefix`` carries the readable part (source kind, sizes, seed); the digest covers
  every field, so configs that differ in anything get different names (folders).
  """
  if not prefix or os.sep in prefix or "/" in prefix:
    raise ValueError(f"config name prefix must be a non-empty folder name, got {prefix!r}")
  return f"{prefix}-{config_digest(fields)}"


def file_stamps(paths: Sequence[str | os.PathLike]) -> tuple[FileStamp, ...]:
  """``((path, size_bytes, mtime_ns), ...)`` of ``paths``, in order (for a config's hash)."""
  out = []
  for p in paths:
    st = os.stat(p)
    out.append((os.fspath(p), int(st.st_size), int(st.st_mtime_ns)))
  return tuple(out)


def check_files_unchanged(where: str, paths: Sequence[str | os.PathLike],
                          recorded: Sequence[Sequence[Any]], config_name: str) -> None:
  """Raises unless ``paths`` still have the sizes and modification times ``recorded``.

  Args:
    where: names the files in the message, e.g. ``"files['train']"``.
    paths: the files as resolved now (a glob may match other files than before).
    recorded: :func:`file_stamps` of the files when the config was made.
    config_name: the config's name, for the message.

  Raises:
    ValueError: "``where``: the files changed since the config ``config_name`` was made
      (...); make a new config", naming the first file that differs.
  """
  now = file_stamps(paths)
  before = tuple(tuple(r) for r in recorded)
  if now == before:
    return
  old, new = {r[0]: r for r in before}, {r[0]: r for r in now}
  if set(old) != set(new):
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    detail = f"added {added}, removed {removed}"
  else:
    changed = [p for p in new if new[p] != old[p]]
    p = changed[0] if changed else next(iter(new), "")
    detail = (f"{p}: size/mtime {tuple(old[p][1:])} -> {tuple(new[p][1:])}" if changed
              else "the order differs")
  raise ValueError(f"{where}: the files changed since the config {config_name} was made "
                   f"({detail}); make a new config")


def stale_incomplete_dirs(builder: Any) -> list[str]:
  """The ``incomplete.*`` folders in ``builder``'s config folder (left by killed builds)."""
  config_dir = os.path.dirname(os.fspath(builder.data_path))
  if not os.path.isdir(config_dir):
    return []
  return sorted(os.path.join(config_dir, d) for d in os.listdir(config_dir)
                if d.startswith("incomplete."))


def prepare_or_reuse(builder: Any, *, log_name: str, file_format: str = "array_record") -> Any:
  """Reuses ``builder``'s dataset if prepared, else builds it; returns ``builder``.

  Before that, warns (absl logging) about :func:`stale_incomplete_dirs`: folders an
  interrupted build left, safe to delete when no build is running (never deleted here:
  another process may be building the same config right now).

  Args:
    builder: a ``tfds.core.DatasetBuilder`` with its data_dir and config.
    log_name: prefix of the log lines, e.g. ``"<study>_tfds"``.
    file_format: tfds file format (array_record: random access without TensorFlow).
  """
  stale = stale_incomplete_dirs(builder)
  if stale:
    logging.warning("%s: unfinished build folder(s) left by an interrupted run (safe to "
                    "delete when no build is running): %s", log_name, stale)
  if builder.is_prepared():
    logging.info("%s: reusing %s", log_name, builder.data_path)
  else:
    builder.download_and_prepare(file_format=file_format)
  return builder


def prepared_splits(builder: Any, requested: Sequence[str] | None, *,
                    build_with: str) -> list[str]:
  """The split names to read from a prepared builder (all of its splits by default).

  Args:
    builder: a ``tfds.core.DatasetBuilder``.
    requested: split names, or None for all the dataset has.
    build_with: the function that builds it, named in the not-prepared error.

  Raises:
    ValueError: the dataset is not prepared.
    KeyError: a requested split is missing (see ``pipeline.check_splits``).
  """
  if not builder.is_prepared():
    raise ValueError(f"{builder.data_path}: dataset is not prepared (build it with "
                     f"{build_with})")
  return pipeline.check_splits(list(builder.info.splits.keys()), requested,
                               where=os.fspath(builder.data_path))
