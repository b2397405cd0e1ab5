r"""Spherical digits: real handwritten digits on the sphere, NR/NR, NR/R and R/R accuracy.

scikit-learn's bundled handwritten digits (1 797 real 8 × 8 images, UCI optdigits; no
download) are projected onto the sphere the way spherical MNIST is made (Cohen et al.,
arXiv 1801.10130: projection from above the north pole onto the southern hemisphere,
bilinear, ``recoil_jax.ops.sphere.projection``) on s2fft's Driscoll–Healy grid at
band-limit ``--L`` (sampled at 2L and low-passed to ℓ < L, so rotations act exactly).
"R" means a fresh Haar-random rotation per image (training: new rotations every epoch;
test: one fixed rotation per image), "NR" no rotation. Each model is trained twice (on NR
and on R) and scored on the NR and R test sets:

  NR/NR  train NR, test NR      NR/R  train NR, test R (the equivariance test)
  R/R    train R, test R

Models: the KamLAND study's spherical CNN (S² → SO(3) → SO(3) → Haar mean → dense) and
its planar CNN on the same equiangular image (``recoil_jax.studies.kamland.model``), with
10 logits. Expected (arXiv 1801.10130 on MNIST): the spherical NR/R close to its NR/NR,
the planar NR/R collapsing.

  python scripts/spherical_digits.py --quick                 # the code path, ~30 s on CPU
  python scripts/spherical_digits.py --out runs/digits.json  # ~10 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recoil_jax.ops.sphere import grids
from recoil_jax.ops.sphere import layers
from recoil_jax.ops.sphere import projection
from recoil_jax.studies.kamland import model as kamland_model


def load_digits(test_fraction: float, seed: int):
  """(train images [n, 8, 8] in [0, 1], train labels, test images, test labels), stratified."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  x = d.images.astype(np.float64) / 16.0
  return model_selection.train_test_split(x, d.target.astype(np.int32),
                                          test_size=test_fraction, random_state=seed,
                                          stratify=d.target)


def spherical_images(images, grid, rng=None, oversample: int = 2, batch: int = 256):
  """[n, 8, 8] → [n, n_θ, n_φ, 1]; a fresh random rotation per image if ``rng`` is given.

  ``projection.project_images_band_limited``: sampled at ``oversample`` × L, then cut to
  ℓ < L, so that a rotation of the digit is an exact rotation of the model's input
  (sampling at L directly aliases the digit's edges and breaks that).
  """
  rot = None if rng is None else grids.random_rotations(rng, len(images))
  return projection.project_images_band_limited(images, grid, rot, oversample)[..., None]


def build(name: str, args):
  if name == "spherical":
    return kamland_model.SphericalClassifier(
        features=tuple(args.features), band_limits=tuple(args.band_limits), N=args.N,
        sampling="dh", hidden=(args.hidden,), num_classes=10,
        relu_oversample=args.relu_oversample)
  return kamland_model.PlanarClassifier(features=tuple(args.planar_features),
                                        hidden=(args.hidden,), num_classes=10)


def train_and_score(name, args, x_train, y_train, tests, grid, train_rotated, seed):
  """Trains one model; returns {test name: accuracy}, seconds and the parameter count."""
  model = build(name, args)
  batch = lambda x: {"sphere": x, "planar": x}  # noqa: E731  Same image for both models.
  example = (spherical_images(x_train[:2], grid, None, args.oversample) if train_rotated
             else x_train[:2])
  variables = model.init(jax.random.PRNGKey(seed), batch(jnp.asarray(example)), train=False)
  params, state = variables["params"], {"batch_stats": variables.get("batch_stats", {})}
  steps_per_epoch = len(y_train) // args.batch
  schedule = optax.cosine_decay_schedule(args.lr, args.epochs * steps_per_epoch, 0.05)
  tx = optax.adam(schedule)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, x, y):
    def loss_fn(p):
      out, new_state = model.apply({"params": p, **state}, batch(x), train=True,
                                   mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean(), new_state
    (loss, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), new_state, opt, loss

  @jax.jit
  def predict(params, state, x):
    return jnp.argmax(model.apply({"params": params, **state}, batch(x), train=False)["logits"], -1)

  rng = np.random.default_rng(seed)
  t0 = time.time()
  for epoch in range(args.epochs):
    x_ep = (spherical_images(x_train, grid, rng, args.oversample) if train_rotated
            else x_train)
    order = rng.permutation(len(y_train))
    losses = []
    for i in range(steps_per_epoch):
      idx = order[i * args.batch:(i + 1) * args.batch]
      params, state, opt, loss = step(params, state, opt, jnp.asarray(x_ep[idx]),
                                      jnp.asarray(y_train[idx]))
      losses.append(float(loss))
    if args.verbose:
      print(f"  {name} {'R' if train_rotated else 'NR'} epoch {epoch + 1}: "
            f"loss {np.mean(losses):.3f}", flush=True)
  seconds = time.time() - t0
  acc = {}
  for tname, (x_test, y_test) in tests.items():
    pred = np.concatenate([np.asarray(predict(params, state, jnp.asarray(x_test[i:i + 256])))
                           for i in range(0, len(y_test), 256)])
    acc[tname] = float(np.mean(pred == y_test))
  return acc, seconds, layers.param_count(params)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--L", type=int, default=12, help="band-limit of the spherical images")
  p.add_argument("--features", type=int, nargs="+", default=[8, 16, 16])
  p.add_argument("--band_limits", type=int, nargs="+", default=[8, 4, 2])
  p.add_argument("--N", type=int, default=3, help="directional band-limit")
  p.add_argument("--relu_oversample", type=int, default=2,
                 help="ReLU on a grid this much finer (layers.so3_pointwise); 1 = plain")
  p.add_argument("--planar_features", type=int, nargs="+", default=[16, 32, 32])
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--epochs", type=int, default=25)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--test_fraction", type=float, default=0.3)
  p.add_argument("--models", default="spherical,planar")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--oversample", type=int, default=2,
                 help="project at this × L and band-limit to L (1: sample at L directly)")
  p.add_argument("--quick", action="store_true",
                 help="tiny run (L=6, 2 epochs, 200 training images): the code path only")
  p.add_argument("--out", default="", help="write the results as JSON (and .md) here")
  p.add_argument("--verbose", action="store_true")
  args = p.parse_args(argv)
  if args.quick:
    args.L, args.features, args.band_limits, args.N = 6, [4, 4], [4, 2], 2
    args.planar_features, args.hidden, args.epochs = [4, 8], 16, 2
  x_train, x_test, y_train, y_test = load_digits(args.test_fraction, args.seed)
  if args.quick:
    x_train, y_train, x_test, y_test = x_train[:200], y_train[:200], x_test[:100], y_test[:100]
  grid = grids.s2fft_grid(args.L, "dh")
  os_ = args.oversample
  tests = {"NR": (spherical_images(x_test, grid, None, os_), y_test),
           "R": (spherical_images(x_test, grid, np.random.default_rng(args.seed + 1), os_),
                 y_test)}
  x_train_nr = spherical_images(x_train, grid, None, os_)
  results = {"data": "scikit-learn digits (real, 8x8) projected onto the sphere",
             "num_train": int(len(y_train)), "num_test": int(len(y_test)),
             "args": vars(args), "models": {}}
  for name in args.models.split(","):
    row = {}
    for train_rot in (False, True):
      acc, sec, n_params = train_and_score(name, args, x_train if train_rot else x_train_nr,
                                           y_train, tests, grid, train_rot, args.seed)
      tr = "R" if train_rot else "NR"
      for tname, a in acc.items():
        row[f"{tr}/{tname}"] = a
      row[f"train_seconds_{tr}"] = round(sec, 1)
      row["parameters"] = n_params
      print(f"{name} trained on {tr}: " + ", ".join(f"{tr}/{k} {v:.3f}" for k, v in acc.items())
            + f" ({sec:.0f} s)", flush=True)
    results["models"][name] = row
  md = ("| model | parameters | NR/NR | NR/R | R/R | R/NR |\n|---|---|---|---|---|---|\n" + "".join(
      f"| {k} | {r['parameters']} | {r['NR/NR']:.3f} | {r['NR/R']:.3f} | {r['R/R']:.3f} | "
      f"{r['R/NR']:.3f} |\n" for k, r in results["models"].items()))
  print(md)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
      f.write(f"Spherical digits ({results['data']}; {results['num_train']} train / "
              f"{results['num_test']} test images, L = {args.L})\n\n" + md)
  return results


if __name__ == "__main__":
  main()
