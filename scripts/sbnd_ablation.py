r"""The Table 2 ablation of arXiv 2012.01301 on simulated SBND events, at a reduced size.

Trains the baseline and every Table 2 variant of ``configs/sbnd.py`` with the
shared trainer (``recoil_jax.train.train_and_evaluate``), one workdir per variant under
``--workdir``, all on the same simulated dataset and for the same number of optimiser
steps (the paper: 25k iterations for every network), then writes ``ablation.md`` and
``ablation.json`` into ``--workdir``: the exact test-set metrics of each variant beside
the paper's numbers. Everything measured here is simulated (toy LArTPC simulation, not
the paper's LArSoft/GENIE/CORSIKA sample) and at a reduced resolution and budget, so
only the trends are comparable.

Resumable: a variant whose workdir holds ``final_metrics.json`` for the same config is
skipped; an interrupted one resumes from its last checkpoint.

With ``--results_dir`` the published files are copied there once every row is done:
``ablation.json`` / ``ablation.md`` and the baseline's ``selection.md`` / ``figure9.md`` /
``figure9.png`` as ``*_baseline.*`` (checkpoints stay in ``--workdir``), plus a
``PROVENANCE.md`` with the command, commit, machine and wall time.

Commands:
  python scripts/sbnd_ablation.py --workdir=runs/sbnd_ablation --steps 120 \
      --results_dir=results/sbnd/ablation                                  # CPU size
  python scripts/sbnd_ablation.py --workdir=/tmp/abl --quick               # seconds/variant
  python scripts/sbnd_ablation.py --workdir=runs/abl_gpu --base_variant=paper \
      --steps=25000                                                        # one GPU

Defaults: 64×128 images, the default config's reduced UResNet, 480 / 96 / 192 events,
240 steps of batch 8 per variant (batch2: 16). CPU cost of the committed table
(``--steps 120``): 57 min for the 11 rows on a shared 2-core machine. --quick (32×64,
2 steps): a few minutes for all 11 rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(REPO_ROOT, "configs", "sbnd.py")
QUICK = dict(base_variant="smoke", height=32, width=64, num_train=16, num_validation=8,
             num_test=8, steps=2)


def _config_module():
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  return sweeps.load_config_file(CONFIG_PATH)


# The rows: the baseline, then the Table 2 variants of configs/sbnd.py in the paper's order.
ABLATION_VARIANTS = ("baseline",) + tuple(_config_module().TABLE2_VARIANTS)


def variant_config(variant: str, args: argparse.Namespace):
  """The config of one ablation row: base variant(s) + the row's variant + sizes + budget.

  ``args.base_variant`` and the row's variant are joined with "+" and parsed by
  ``configs/sbnd.py`` (``config_lib.apply_variants``): an unknown or repeated name is an
  error naming the known ones.
  """
  names = [n for n in (args.base_variant, "" if variant == "baseline" else variant) if n]
  config = _config_module().get_config("+".join(names) or None)
  d, t = config.data, config.train
  d.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  for key in ("height", "width", "num_train", "num_validation", "num_test"):
    value = getattr(args, key)
    if value:
      d[key] = value
  per_epoch = d.num_train // t.global_batch_size
  if per_epoch < 1:
    raise ValueError(f"--num_train={d.num_train} is smaller than one batch "
                     f"({t.global_batch_size}) of variant {variant!r}")
  t.num_epochs = math.ceil(args.steps / per_epoch)
  t.steps_per_epoch = math.ceil(args.steps / t.num_epochs)
  t.early_stopping_patience = 0
  t.checkpoint_every_steps = max(t.checkpoint_every_steps, t.steps_per_epoch)
  t.progress_bar = args.progress
  config.analysis.num_event_displays = args.displays
  return config


def _fmt(x: Any) -> str:
  return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def write_tables(workdir: str, rows: Sequence[dict[str, Any]], setup: dict[str, Any]
                 ) -> tuple[str, str]:
  """``ablation.json`` and ``ablation.md`` (ours, simulated, beside the paper's Table 2)."""
  from recoil_jax import io  # pylint: disable=g-import-not-at-top
  from recoil_jax.studies.sbnd import analysis as sbnd_analysis  # pylint: disable=g-import-not-at-top
  label = io.SIMULATED
  metrics = sbnd_analysis.TABLE2_METRICS
  names = ("non-bkg acc.", "cosmic IoU", "ν IoU", "mean IoU")
  md = [f"Table 2 ablation ({label}): {setup['height']}×{setup['width']} images, "
        f"{setup['num_train']} train / {setup['num_test']} test simulated events, "
        f"{setup['steps']} steps per variant, base config `{setup['base_variant'] or 'default'}`"
        " of configs/sbnd.py. Ours: exact test-set metrics of the best-validation "
        "weights (toy simulation, reduced size and budget); paper: arXiv 2012.01301 Table 2 "
        "(640×1024, 25k steps, LArSoft simulation). Not one-to-one comparable.", "",
        "| variant | " + " | ".join(f"{n} ({label})" for n in names) + " | "
        + " | ".join(f"{n} (paper)" for n in names) + " | steps | train time [s] |",
        "|---|" + "---|" * (2 * len(names) + 2)]
  for row in rows:
    ours = [_fmt(row["metrics"].get(k)) if row.get("metrics") else "–" for k in metrics]
    paper = [_fmt(v) for v in row["paper"]]
    md.append(f"| {row['paper_name']} | " + " | ".join(ours) + " | " + " | ".join(paper)
              + f" | {row.get('steps', '–')} | "
              + ("–" if row.get("seconds") is None else f"{row['seconds']:.0f}") + " |")
  md_text = "\n".join(md) + "\n"
  payload = {"data": label, "setup": setup, "rows": list(rows)}
  json_path = io.write_json_atomic(os.path.join(workdir, "ablation.json"), payload)
  md_path = io.write_text_atomic(os.path.join(workdir, "ablation.md"), md_text)
  return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="one sub-folder per variant + tables")
  parser.add_argument("--data_dir", default="", help="TFDS folder (default: WORKDIR/tfds)")
  parser.add_argument("--variants", default=",".join(ABLATION_VARIANTS),
                      help=f"comma-separated subset of {','.join(ABLATION_VARIANTS)}")
  parser.add_argument("--base_variant", default="",
                      help="variant(s) of configs/sbnd.py every row starts from "
                           "(e.g. 'paper' on a GPU; default: the CPU-sized default)")
  parser.add_argument("--height", type=int, default=0, help="rows per plane (0: config's)")
  parser.add_argument("--width", type=int, default=0, help="wires per plane (0: config's)")
  parser.add_argument("--num_train", type=int, default=0)
  parser.add_argument("--num_validation", type=int, default=0)
  parser.add_argument("--num_test", type=int, default=0)
  parser.add_argument("--steps", type=int, default=240, help="optimiser steps per variant")
  parser.add_argument("--displays", type=int, default=0, help="event displays per variant")
  parser.add_argument("--progress", action="store_true", help="tqdm progress bars")
  parser.add_argument("--results_dir", default="",
                      help="copy the tables and the baseline's figures here when all rows "
                           "are done (e.g. results/sbnd/ablation)")
  parser.add_argument("--quick", action="store_true",
                      help=f"tiny smoke-size check of the whole script: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  try:
    variants = sweeps.selected_names(args.variants, ABLATION_VARIANTS, "variant")
  except ValueError as e:
    parser.error(str(e))
  workdir, args.data_dir = sweeps.prepare_workdir(args.workdir, args.data_dir)
  from recoil_jax.studies.sbnd import analysis as sbnd_analysis  # pylint: disable=g-import-not-at-top

  rows, setup = [], None
  start = time.time()
  for variant in variants:
    config = variant_config(variant, args)
    if setup is None:
      d = config.data
      setup = {"height": d.height, "width": d.width, "num_train": d.num_train,
               "num_validation": d.num_validation, "num_test": d.num_test,
               "steps": args.steps, "base_variant": args.base_variant,
               "data_seed": d.seed, "seed": config.seed}
    run_dir = os.path.join(workdir, variant)
    final, seconds = sweeps.run_or_reuse(config, run_dir, name=variant, tag="sbnd_ablation")
    m = final["metrics"]
    paper_name, paper = sbnd_analysis.PAPER_TABLE2[variant]
    rows.append({"variant": variant, "paper_name": paper_name, "paper": list(paper),
                 "metrics": m.get("test"), "validation_metrics": m.get("validation"),
                 "selection": (m.get("analysis") or {}).get("selection"),
                 "steps": final.get("step"), "best_step": final.get("best_step"),
                 "batch": config.train.global_batch_size, "seconds": seconds,
                 # Relative to the folder of ablation.json, so that the table can be moved.
                 "workdir": os.path.relpath(run_dir, workdir)})
    write_tables(workdir, rows, setup)  # After every variant: partial tables survive.
  json_path, md_path = write_tables(workdir, rows, setup)
  with open(md_path, encoding="utf-8") as f:
    print(f.read())
  print(f"[sbnd_ablation] wrote {md_path} and {json_path}")
  if args.results_dir:
    published = publish(workdir, os.path.abspath(args.results_dir), rows,
                        argv if argv is not None else sys.argv[1:], time.time() - start)
    print(f"[sbnd_ablation] published {len(published)} files into {args.results_dir}")
  return 0


def publish(workdir: str, results_dir: str, rows: Sequence[dict[str, Any]],
            argv: Sequence[str], seconds: float) -> list[str]:
  """Copies the tables and the baseline's figures into ``results_dir`` (atomic writes)."""
  from recoil_jax import io  # pylint: disable=g-import-not-at-top
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top

  os.makedirs(results_dir, exist_ok=True)
  with open(os.path.join(workdir, "ablation.json"), encoding="utf-8") as f:
    payload = json.load(f)
  for row in payload["rows"]:  # Run folders relative to the published table.
    row["workdir"] = os.path.relpath(os.path.join(workdir, row["workdir"]), results_dir)
  out = [io.write_json_atomic(os.path.join(results_dir, "ablation.json"), payload)]
  out.append(io.copy_file_atomic(os.path.join(workdir, "ablation.md"),
                                os.path.join(results_dir, "ablation.md")))
  baseline = os.path.join(workdir, "baseline")
  for name in ("selection.md", "figure9.md", "figure9.png"):
    src = os.path.join(baseline, name)
    if os.path.exists(src) and any(r["variant"] == "baseline" for r in rows):
      stem, ext = os.path.splitext(name)
      out.append(io.copy_file_atomic(src, os.path.join(results_dir, f"{stem}_baseline{ext}")))
  base = payload["setup"].get("base_variant") or ""
  out.append(sweeps.write_provenance(
      results_dir,
      what=("**All numbers in this folder are simulated** (toy LArTPC simulation, reduced "
            "size and budget); the \"(paper)\" columns are arXiv 2012.01301 Tables 2 and 3."),
      config=f"configs/sbnd.py{':' + base if base else ''}", overrides="none",
      command=f"python scripts/sbnd_ablation.py {' '.join(argv)}", repo_root=REPO_ROOT,
      wall_time=f"{seconds / 60:.1f} min for the rows trained in this call"))
  return out


if __name__ == "__main__":
  sys.exit(main())
