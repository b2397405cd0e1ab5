r"""The talk's three training regimes for NEWSdm in one table, on untouched held-out data.

The source study (a PhD talk on deep learning for NEWSdm; arXiv 2106.11995, 2005.13042)
compared three ways of treating the training data:

  physical     only physically motivated data: C30, C60, C100 and fog;
  unphysical   the same plus samples "we are not interested in" (silver nanoparticles on
               the emulsion surfaces);
  rotational   the physical data enlarged by random image rotations (the talk: 2 rotated
               copies; here the source study's on-the-fly rotation by 15° steps in
               [−90°, 90°], the same for every polarisation image, ``model.augment="source"``);

and checked them on "intact physical data, not augmented or modified". Here every regime
is a variant of ``configs/newsdm.py`` trained by the shared trainer
(``recoil_jax.train.train_and_evaluate``), one workdir per regime under ``--workdir``,
with the same sizes, seeds and number of steps; ``cycled`` (rotation that also cycles the
polarisation axis, beyond the talk) can be added with ``--regimes``. The table is computed
on the task's streaming test sets: events of their own seeds that no regime trains on or
selects its checkpoint with (the trainer keeps the best-validation weights; validation
differs between regimes, the test sets do not), identical for every regime. Signal at
beam 0° (the training direction) and 90° (where only an isotropic model keeps its
score), backgrounds fog, γ and silver nanoparticles. Everything is **simulated** (the toy
of ``recoil_jax/studies/newsdm/sim.py``) and at a CPU size far below the authors'.

Writes ``regimes.md`` and ``regimes.json`` into ``--workdir`` (through ``recoil_jax.io``).
Resumable: a regime whose workdir holds a finished run of the same config is skipped.

Commands:
  python scripts/newsdm_regimes.py --workdir=runs/newsdm_regimes            # CPU, ~25 min idle
  python scripts/newsdm_regimes.py --workdir=/tmp/regimes --quick           # ~1 min
  python scripts/newsdm_regimes.py --workdir=runs/regimes_gpu --base_variant=paper \
      --architecture=newsnet3d --num_train=0 --epochs=0                     # one GPU

Defaults: NEWSnet_3D at width 0.125, 4 800 training events × 3 epochs of batch 32 (417
steps), 480 validation, 200 signal events per carbon energy and beam angle, 2 000 per
background; ``--regimes`` defaults to all four (the talk's three + ``cycled``). Measured
on the 2-core CPU shared with 4–8 other jobs (load 4–8): 1 271 / 1 480 / 972 s for
physical / unphysical / rotational, training and test sets included
(``results/newsdm/regimes``); --quick (plain 3D CNN): 53–85 s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(REPO_ROOT, "configs", "newsdm.py")
TALK_REGIMES = ("physical", "unphysical", "rotational")
REGIMES = TALK_REGIMES + ("cycled",)
DEFAULTS = dict(base_variant="", architecture="newsnet3d", width=0.125, num_train=4800,
                num_validation=480, epochs=3, batch=32, num_test_signal=200,
                num_test_background=2000, beam_angles="0,90")
QUICK = dict(base_variant="smoke", architecture="plain3d", width=0.125, num_train=96,
             num_validation=48, epochs=1, batch=16, num_test_signal=24,
             num_test_background=48, beam_angles="0,90")
# Table columns: (heading, signal kind, beam angle index, background kind).
AUC_COLUMNS = (("C30 vs fog", "c30", 0, "fog"), ("C100 vs fog", "c100", 0, "fog"),
               ("C100 (90° beam) vs fog", "c100", 1, "fog"), ("C60 vs γ", "c60", 0, "gamma"),
               ("C100 vs γ", "c100", 0, "gamma"),
               ("C100 vs nanoparticles", "c100", 0, "nanoparticle"))
REJECTION_COLUMNS = (("fog", "c100", 0, "fog"), ("γ", "c100", 0, "gamma"))


def _config_module():
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  return sweeps.load_config_file(CONFIG_PATH)


def regime_config(regime: str, args: argparse.Namespace):
  """The config of one regime: ``base_variant + regime`` of configs/newsdm.py, then sizes.

  Every regime gets the same sizes, seeds, number of epochs and test sets; only the
  training kinds (unphysical) or the augmentation (rotational, cycled) differ. Flags left
  at 0 / "" keep the config's value.
  """
  names = [n for n in (args.base_variant, regime) if n]
  config = _config_module().get_config("+".join(names))
  d, m, a, t = config.data, config.model, config.analysis, config.train
  d.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  if args.architecture:
    m.architecture = args.architecture
  if args.width:
    m.width = args.width
  for key, target in (("num_train", d), ("num_validation", d), ("num_test_signal", a),
                      ("num_test_background", a)):
    value = getattr(args, key)
    if value:
      target[key] = value
  if args.epochs:
    t.num_epochs = args.epochs
  if args.batch:
    t.global_batch_size = args.batch
  if args.beam_angles:
    a.test_beam_angles_deg = tuple(float(x) for x in args.beam_angles.split(","))
  if 0.3 not in a.signal_efficiencies:
    a.signal_efficiencies = tuple(sorted(set(a.signal_efficiencies) | {0.3}))
  a.table_signal_efficiency = 0.3
  t.early_stopping_patience = 0  # Same number of steps for every regime.
  t.progress_bar = args.progress
  return config


def _pair(analysis: dict[str, Any], kind: str, angle: float | None, background: str
          ) -> dict[str, Any] | None:
  if angle is None:
    return None
  return analysis["pairs"].get(f"test_{kind}_beam{angle:g}/test_{background}")


def _working_point(entry: dict[str, Any] | None, method: str, efficiency: float
                   ) -> dict[str, Any] | None:
  if entry is None:
    return None
  for wp in entry[method]["working_points"]:
    if abs(wp["target_signal_efficiency"] - efficiency) < 1e-9:
      return wp
  return None


def _fmt_auc(entry: dict[str, Any] | None, method: str) -> str:
  return "–" if entry is None else f"{entry[method]['auc']:.3f}"


def _fmt_rejection(wp: dict[str, Any] | None) -> str:
  if wp is None:
    return "–"
  # JSON stores an infinite rejection power (no background event passes) as null.
  f = lambda v: "∞" if v is None or math.isinf(v) else f"{v:.3g}"  # noqa: E731
  lo, hi = wp["rejection_power_interval"]
  return f"{f(wp['rejection_power'])} [{f(lo)}, {f(hi)}] ({wp['background_pass']}/" \
         f"{wp['num_background']})"


def summarise(regime: str, analysis: dict[str, Any], angles: Sequence[float],
              efficiency: float, method: str = "nn") -> dict[str, Any]:
  """One table row: AUCs and rejection powers (with Clopper–Pearson intervals)."""
  angle = lambda i: float(angles[i]) if i < len(angles) else None  # noqa: E731
  row: dict[str, Any] = {"regime": regime, "method": method, "auc": {}, "rejection": {}}
  for heading, kind, i, bkg in AUC_COLUMNS:
    entry = _pair(analysis, kind, angle(i), bkg)
    row["auc"][heading] = None if entry is None else entry[method]["auc"]
  for heading, kind, i, bkg in REJECTION_COLUMNS:
    row["rejection"][heading] = _working_point(_pair(analysis, kind, angle(i), bkg), method,
                                               efficiency)
  return row


def write_tables(workdir: str, rows: Sequence[dict[str, Any]], setup: dict[str, Any]
                 ) -> tuple[str, str]:
  """``regimes.json`` and ``regimes.md`` (simulated) in ``workdir``."""
  from recoil_jax import io  # pylint: disable=g-import-not-at-top
  label = io.SIMULATED
  eff = setup["signal_efficiency"]
  angles = setup["beam_angles_deg"]
  auc_heads = [h for h, _, i, _ in AUC_COLUMNS if i < len(angles)]
  rej_heads = [h for h, _, i, _ in REJECTION_COLUMNS if i < len(angles)]
  md = [f"# NEWSdm training regimes ({label})", "",
        f"The talk's regimes on the same untouched held-out events ({label}: toy emulsion "
        f"of recoil_jax/studies/newsdm/sim.py): {setup['num_test_signal']} events per carbon "
        f"energy and beam angle, {setup['num_test_background']} per background, before the "
        f"cleaning cuts; training {setup['num_train']} events × {setup['epochs']} epochs of "
        f"batch {setup['batch']}, `{setup['architecture']}` width {setup['width']}, base "
        f"config `{setup['base_variant'] or 'default'}` of configs/newsdm.py. Beam 0° is the "
        "training direction. Rejection power 1/ε_B of the background at "
        f"{100 * eff:g} % C100 efficiency, 68.27 % Clopper–Pearson interval, (passing / "
        "events after the cuts).", "",
        "| regime | training kinds | augmentation | "
        + " | ".join(f"AUC {h}" for h in auc_heads) + " | "
        + " | ".join(f"1/ε_B {h}" for h in rej_heads) + " | steps | wall time [s] |",
        "|---|---|---|" + "---|" * (len(auc_heads) + len(rej_heads) + 2)]
  for row in rows:
    aucs = ["–" if row["auc"].get(h) is None else f"{row['auc'][h]:.3f}" for h in auc_heads]
    rejs = [_fmt_rejection(row["rejection"].get(h)) for h in rej_heads]
    seconds = row.get("seconds")
    md.append(f"| {row['regime']} | {', '.join(row['train_kinds'])} | {row['augment']} | "
              + " | ".join(aucs) + " | " + " | ".join(rejs) + f" | {row.get('steps', '–')} | "
              + ("–" if seconds is None else f"{seconds:.0f}") + " |")
  md.append("")
  md.append("The classical barycentre-shift cut (no training; the same events): "
            + ", ".join(f"AUC {h} {v:.3f}" for h, v in
                        (rows[0].get("barycentre_auc") or {}).items() if v is not None)
            + "." if rows else "")
  md_text = "\n".join(md) + "\n"
  payload = {"data": label, "setup": setup, "rows": list(rows)}
  json_path = io.write_json_atomic(os.path.join(workdir, "regimes.json"), payload)
  md_path = io.write_text_atomic(os.path.join(workdir, "regimes.md"), md_text)
  return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="one sub-folder per regime + tables")
  parser.add_argument("--data_dir", default="", help="TFDS folder (default: WORKDIR/tfds)")
  parser.add_argument("--regimes", default=",".join(REGIMES),
                      help=f"comma-separated subset of {','.join(REGIMES)}")
  parser.add_argument("--base_variant", default=DEFAULTS["base_variant"],
                      help="variant(s) of configs/newsdm.py every regime starts from")
  parser.add_argument("--architecture", default=DEFAULTS["architecture"],
                      help="plain3d or newsnet3d ('' keeps the config's)")
  parser.add_argument("--width", type=float, default=DEFAULTS["width"])
  parser.add_argument("--num_train", type=int, default=DEFAULTS["num_train"],
                      help="simulated training events before the cuts (0: config's)")
  parser.add_argument("--num_validation", type=int, default=DEFAULTS["num_validation"])
  parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
  parser.add_argument("--batch", type=int, default=DEFAULTS["batch"])
  parser.add_argument("--num_test_signal", type=int, default=DEFAULTS["num_test_signal"],
                      help="held-out events per carbon energy and beam angle")
  parser.add_argument("--num_test_background", type=int,
                      default=DEFAULTS["num_test_background"])
  parser.add_argument("--beam_angles", default=DEFAULTS["beam_angles"],
                      help="carbon beam angles of the held-out signal, degrees; the first "
                           "is the training direction")
  parser.add_argument("--progress", action="store_true", help="tqdm progress bars")
  parser.add_argument("--quick", action="store_true",
                      help=f"tiny check of the whole script: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from recoil_jax import main as launcher  # pylint: disable=g-import-not-at-top
  from recoil_jax import sweeps  # pylint: disable=g-import-not-at-top
  try:
    regimes = sweeps.selected_names(args.regimes, REGIMES, "regime")
  except ValueError as e:
    parser.error(str(e))
  workdir, args.data_dir = sweeps.prepare_workdir(args.workdir, args.data_dir)
  launcher.set_quiet_logging()  # As the launcher: no TFDS bars or library INFO lines.

  rows, setup = [], None
  for regime in regimes:
    config = regime_config(regime, args)
    a = config.analysis
    if setup is None:
      setup = {"base_variant": args.base_variant, "architecture": config.model.architecture,
               "width": config.model.width, "num_train": config.data.num_train,
               "num_validation": config.data.num_validation,
               "epochs": config.train.num_epochs, "batch": config.train.global_batch_size,
               "num_test_signal": a.num_test_signal,
               "num_test_background": a.num_test_background,
               "beam_angles_deg": [float(x) for x in a.test_beam_angles_deg],
               "signal_efficiency": a.table_signal_efficiency, "data_seed": config.data.seed,
               "seed": config.seed}
    run_dir = os.path.join(workdir, regime)
    analysis, seconds = sweeps.run_or_reuse(config, run_dir, name=regime, tag="newsdm_regimes",
                                            result_file="newsdm_analysis.json")
    angles = setup["beam_angles_deg"]
    row = summarise(regime, analysis, angles, setup["signal_efficiency"])
    baseline = summarise(regime, analysis, angles, setup["signal_efficiency"], "bar_shift")
    row.update(train_kinds=list(config.data.train_kinds), augment=config.model.augment,
               steps=analysis.get("step"), seconds=seconds, barycentre_auc=baseline["auc"],
               workdir=os.path.relpath(run_dir, workdir))
    rows.append(row)
    write_tables(workdir, rows, setup)  # After every regime: partial tables survive.
  json_path, md_path = write_tables(workdir, rows, setup)
  with open(md_path, encoding="utf-8") as f:
    print(f.read())
  print(f"[newsdm_regimes] wrote {md_path} and {json_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
