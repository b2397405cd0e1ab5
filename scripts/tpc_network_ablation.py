"""Network half of the TPC physics ablation (issue 15): the vMF network trained and tested on
tracks made with the simulator's physics added one ingredient at a time.

Each row runs the main job (``python -m recoil_jax.main``) with ``configs/tpc.py`` plus
``--variant`` and the row's ``data.sim_physics`` switches, in ``--root/<row>``; a row whose
workdir already has ``figure6.json`` is not rerun (so a killed ablation resumes, and the
main job itself resumes a half-trained row). Rows: ``toy`` (no δ-rays, straggling or
electron spread), ``straggling``, ``delta_rays``, ``electron_spread`` (each alone on top of
the toy) and ``all`` (today's default); ``NAME:elastic=S`` is row NAME with every atom's elastic
cross section × S (``data.sim_physics.elastic_scale``, a sensitivity check). ``--collect NAME=WORKDIR`` adds a finished run
(e.g. a ``cpu_hour`` workdir) as a row without training.

From each row's ``figure6.json`` it tabulates, per simulated test set, the mean cosine
distance 1 − ⟨cos⟩ (= 1 + the cosine-similarity loss; 0 perfect, 1 random, the seed's unit)
of the vMF network on all events and at the non-ML method's efficiency, and of the non-ML
moments method (standard, true head/tail, grid-searched on validation) on the events where it
does not fail. All numbers are simulated.

Usage:
  python scripts/tpc_network_ablation.py --root runs/tpc_ablation [--variant ""] \\
      [--rows toy,straggling,delta_rays,electron_spread,all,all:elastic=2]
      [--collect NAME=WORKDIR ...]
      [--out runs/tpc_ablation/ablation]   # writes ablation.json and ablation.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SWITCHES = ("delta_rays", "straggling", "electron_spread")
ROWS = {
    "toy": (),
    "straggling": ("straggling",),
    "delta_rays": ("delta_rays",),
    "electron_spread": ("electron_spread",),
    "all": SWITCHES,
}
LABELS = {"toy": "toy (no δ-rays, straggling, spread)", "straggling": "+ straggling",
          "delta_rays": "+ δ-rays", "electron_spread": "+ electron spread",
          "all": "all three (the default)"}
TEST_SETS = ("test_40keV_200um", "test_50keV_443um")


def split_row(row: str, known) -> tuple[str, float]:
  """(row name, elastic scale) of ``NAME`` or ``NAME:elastic=S``; NAME must be in ``known``.

  Shared with ``tpc_physics_ablation.py`` (its rows are named the same way).
  """
  name, _, mod = row.partition(":")
  if name not in known:
    raise ValueError(f"--rows: unknown row {name!r}; known: {', '.join(known)}")
  scale = 1.0
  if mod:
    key, _, value = mod.partition("=")
    try:
      scale = float(value)
    except ValueError:
      scale = float("nan")
    if key != "elastic" or not scale > 0:
      raise ValueError(f"--rows: {row!r}: expected NAME:elastic=S with S > 0")
  return name, scale


def parse_row(row: str) -> tuple[tuple[str, ...], float]:
  """(switches on, elastic scale) of ``NAME`` or ``NAME:elastic=S``."""
  name, scale = split_row(row, ROWS)
  return ROWS[name], scale


def row_label(row: str) -> str:
  name, _, mod = row.partition(":")
  return LABELS[name] + (f", elastic σ × {mod.partition('=')[2]}" if mod else "")


def row_command(row: str, workdir: str, variant: str = "",
                config: str = "configs/tpc.py", extra: tuple[str, ...] = ()) -> list[str]:
  """The main-job command of ``row``: the config with exactly the row's switches on (and its
  elastic scale, ``data.sim_physics.elastic_scale``)."""
  on, scale = parse_row(row)
  spec = f"{config}:{variant}" if variant else config
  return ([sys.executable, "-m", "recoil_jax.main", f"--config={spec}", f"--workdir={workdir}"]
          + [f"--config.data.sim_physics.{s}={s in on}" for s in SWITCHES]
          + [f"--config.data.sim_physics.elastic_scale={float(scale)}"] + list(extra))


def row_scores(figure6: dict) -> dict:
  """Cosine distances (1 + loss) per test set from a main job's ``figure6.json``."""
  if figure6.get("label") != "simulated":
    raise ValueError("figure6.json: label is not 'simulated'; this ablation is for "
                     "simulated test sets")
  out = {}
  for test_set in TEST_SETS:
    t = figure6["table"].get(test_set)
    if t is None:
      raise ValueError(f"figure6.json: no table for {test_set!r}")
    dist = lambda key: None if t.get(key) is None else 1.0 + float(t[key])  # noqa: E731
    out[test_set] = dict(
        vmf=dist("hetero_cut_0pct"), vmf_at_nml_eff=dist("hetero_at_nml_efficiency"),
        nml=dist("nml"), nml_eff=t.get("nml_efficiency"),
        nml_truth=dist("nml_true_head_tail"),
        nml_tuned=dist("nml_tuned"), nml_tuned_eff=t.get("nml_tuned_efficiency"))
  return out


def _fmt(x, eff=None) -> str:
  if x is None:
    return "–"
  return f"{x:.3f}" + ("" if eff is None else f" ({100 * eff:.1f} %)")


def markdown(rows: dict[str, dict], title: str) -> str:
  """One table per test set: rows × (vMF, vMF at NML eff., NML standard / truth / tuned)."""
  lines = [f"# {title} (simulated)", "",
           "Mean cosine distance 1 − ⟨cos⟩ (0 perfect, 1 random) on simulated test sets; "
           "non-ML methods over the events where they do not fail (efficiency in brackets).",
           ""]
  for test_set in TEST_SETS:
    lines += [f"## {test_set} (simulated)", "",
              "| tracks | vMF, all events | vMF at the NML's efficiency | NML standard (eff.) "
              "| NML true head/tail | NML grid-searched on validation (eff.) |",
              "|---|---|---|---|---|---|"]
    for name, r in rows.items():
      s = r["scores"][test_set]
      lines.append(f"| {r['label']} (simulated) | {_fmt(s['vmf'])} | {_fmt(s['vmf_at_nml_eff'])} "
                   f"| {_fmt(s['nml'], s['nml_eff'])} | {_fmt(s['nml_truth'])} "
                   f"| {_fmt(s['nml_tuned'], s['nml_tuned_eff'])} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="folder of the rows' workdirs")
  p.add_argument("--variant", default="", help="configs/tpc.py variant(s), e.g. cpu_hour")
  p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to train")
  p.add_argument("--collect", nargs="*", default=[], metavar="NAME=WORKDIR",
                 help="finished runs added as rows without training")
  p.add_argument("--extra", nargs="*", default=[], help="more --config.KEY=VALUE flags")
  p.add_argument("--out", default="", help="path prefix of ablation.json / .md "
                 "(default: ROOT/ablation)")
  p.add_argument("--dry-run", action="store_true", help="print the commands only")
  args = p.parse_args()

  rows: dict[str, dict] = {}
  for row in [r for r in args.rows.split(",") if r]:
    workdir = os.path.join(args.root, row.replace(":", "_").replace("=", ""))
    cmd = row_command(row, workdir, args.variant, extra=tuple(args.extra))
    print(" ".join(cmd[1:]), flush=True)
    if args.dry_run:
      continue
    seconds = None
    if not os.path.exists(os.path.join(workdir, "figure6.json")):
      os.makedirs(args.root, exist_ok=True)
      t0 = time.perf_counter()
      with open(os.path.join(args.root, f"{row}.log"), "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
      seconds = time.perf_counter() - t0
      if rc != 0:
        raise SystemExit(f"row {row!r} failed (exit {rc}); see {args.root}/{row}.log")
    on, scale = parse_row(row)
    rows[row] = dict(label=row_label(row), workdir=workdir, switches=list(on), elastic_scale=scale,
                     seconds=seconds, command=" ".join(cmd[1:]))
  for item in args.collect:
    name, sep, workdir = item.partition("=")
    if not sep:
      raise SystemExit(f"--collect {item!r}: expected NAME=WORKDIR")
    rows[name] = dict(label=name, workdir=workdir, switches=None, seconds=None, command=None)
  if args.dry_run:
    return
  for name, r in rows.items():
    path = os.path.join(r["workdir"], "figure6.json")
    with open(path, encoding="utf-8") as f:
      try:
        r["scores"] = row_scores(json.load(f))
      except ValueError as e:
        raise SystemExit(f"{path}: {e}") from e
  title = f"TPC physics ablation, vMF network ({args.variant or 'default size'})"
  out = args.out or os.path.join(args.root, "ablation")
  with open(out + ".json", "w", encoding="utf-8") as f:
    json.dump(dict(label="simulated", variant=args.variant, rows=rows), f, indent=1)
  text = markdown(rows, title)
  with open(out + ".md", "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
