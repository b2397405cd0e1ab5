"""CYGNO segmentation: image cache, labels, metrics, efficiency definition, the smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config, subprocess_env
from recoil_jax.studies.cygno import reco
from recoil_jax.studies.cygno import segmentation as seg
from recoil_jax.studies.cygno import sim
from recoil_jax.studies.cygno import task as cygno_task


@pytest.mark.slow  # ~15 s; its parts (cache, labels, metrics, losses, variants) stay below.
def test_attresunet_smoke_run_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "recoil_jax.main", "--config=configs/cygno.py:smoke+attresunet",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'data'}"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("cygno_segmentation.md", "cygno_segmentation.json",
               "segmentation_efficiency.png", "segmentation_displays.png",
               "final_metrics.json"):
    assert (workdir / name).exists(), name
  md = (workdir / "cygno_segmentation.md").read_text()
  assert "simulated" in md and "network (attresunet)" in md and "1–2" in md
  res = json.loads((workdir / "cygno_segmentation.json").read_text())
  assert res["data"] == "simulated" and res["kind"] == "attresunet"
  for cls in ("NR", "ER"):
    for bins in res["efficiency"][cls].values():
      assert [b["energy_kev"][0] for b in bins] == list(range(1, 10))
      for b in bins:
        if b["tracks"]:
          assert b["interval"][0] <= b["efficiency"] <= b["interval"][1]
  final = json.loads((workdir / "final_metrics.json").read_text())
  for key in ("loss",) + seg.METRICS:
    assert np.isfinite(final["metrics"]["test"][key])


def test_image_cache_splits_and_classical_maps(tmp_path):
  cfg = sim.SimConfig(height=48, width=48, tracks_per_image=2, er_energy_kev=(1.0, 10.0),
                      nr_ionisation_kev=(1.0, 10.0))
  kw = dict(num_images=10, seed=3, chunk_images=6)
  d1, p1 = seg.load_or_build(str(tmp_path), cfg, reco.RecoConfig(), **kw)
  d2, p2 = seg.load_or_build(str(tmp_path), cfg, reco.RecoConfig(), **kw)
  assert p1 == p2
  for k in seg.IMAGE_KEYS:
    np.testing.assert_array_equal(d1[k], d2[k])
  assert d1["input"].shape == (10, 48, 48) and set(np.unique(d1["input"])) <= {0, 1}
  np.testing.assert_array_equal(d1["classical_done"], d1["split"] == 2)
  assert not d1["classical"][d1["split"] != 2].any()
  assert sorted(np.bincount(d1["split"], minlength=3)) == [2, 2, 6]
  # Per-track truth is consistent with the instance maps (global frame indices).
  assert d1["track_image"].max() == 9 and np.all(np.diff(d1["track_image"]) >= 0)
  for g, k, n in zip(d1["track_image"], d1["track_index"], d1["track_mask_pixels"]):
    if n == 0:
      assert not np.any(d1["instance"][g] == k + 1)
  src = seg.ImageSource(d1, "train", "track")
  ex = src[0]
  assert ex["image"].dtype == np.float32 and ex["label"].dtype == np.int32
  np.testing.assert_array_equal(ex["label"], d1["pixel_label"][ex["image_index"]] > 0)


def test_labels_metrics_and_track_efficiency():
  pl = np.array([[0, 1, 2], [2, 0, 1]], np.uint8)
  np.testing.assert_array_equal(seg.labels_for(pl, "track"), [[0, 1, 1], [1, 0, 1]])
  np.testing.assert_array_equal(seg.labels_for(pl, "er_nr"), pl)
  with pytest.raises(ValueError, match="classes"):
    seg.labels_for(pl, "instances")
  truth = np.zeros((1, 4, 4), bool)
  truth[0, :2, :2] = True  # 4 track pixels.
  pred = np.zeros((1, 4, 4), bool)
  pred[0, 0, :3] = True  # 2 tp, 1 fp, 2 fn.
  m = seg.pixel_metrics(pred, truth)
  assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 2)
  assert m["iou"] == pytest.approx(2 / 5) and m["precision"] == pytest.approx(2 / 3)
  assert m["recall"] == pytest.approx(0.5)
  # Two frames, three tracks: track 0 of frame 5 owns 4 pixels (2 predicted: 50 %),
  # track 1 of frame 5 owns 1 (not predicted), track 0 of frame 7 owns none.
  instance = np.zeros((8, 4, 4), np.int16)
  instance[5, :2, :2] = 1
  instance[5, 3, 3] = 2
  preds = np.concatenate([pred, np.ones((1, 4, 4), bool)])
  f = seg.track_fractions(preds, instance, np.array([5, 7]), np.array([5, 5, 7]),
                          np.array([0, 1, 0]))
  np.testing.assert_allclose(f, [0.5, 0.0, 0.0])
  eff = seg.track_efficiency(f >= 0.5, np.array([1.5, 1.2, 2.5]), (1.0, 2.0, 3.0, 4.0))
  assert [(b["reconstructed"], b["tracks"]) for b in eff] == [(1, 2), (0, 1), (0, 0)]
  assert eff[0]["efficiency"] == 0.5 and eff[2]["efficiency"] is None
  lo, hi = eff[0]["interval"]
  assert 0 < lo < 0.5 < hi < 1


def test_loss_terms_are_exact_pixel_sums():
  labels = np.zeros((2, 4, 4), np.int32)
  labels[0, 1, 1] = labels[1, 2, 2] = 1
  logits = jnp.asarray(np.where(labels[..., None] == np.arange(2), 5.0, -5.0), jnp.float32)
  mask = jnp.asarray([1.0, 0.0])  # The second image is padding.
  terms = seg.loss_terms({"logits": logits}, {"label": labels, "mask": mask},
                         balance="light", class_weights=(1.0, 5.0), focal_gamma=2.0)
  assert set(terms) == {"loss"} | set(seg.METRICS)
  s, n = terms["pixel_iou"]
  assert float(s) == 1 and float(n) == 1  # Only the real image's pixel counts.
  assert float(terms["loss"][1]) == 1 and float(terms["loss"][0]) < 1e-3


def test_config_variants_and_validation():
  a = load_config("configs/cygno.py", "smoke+unet")
  b = load_config("configs/cygno.py", "unet+smoke")
  assert a.to_dict() == b.to_dict()
  assert a.model.kind == "unet" and a.data.image_size == 64
  assert tuple(a.data.nr_ionisation_kev) == (1.0, 10.0)
  assert load_config("configs/cygno.py", "attresunet+cpu_hour").data.num_images == 3000
  assert load_config("configs/cygno.py").model.kind == "dnn"
  with pytest.raises(ValueError, match="two segmentation networks"):
    load_config("configs/cygno.py", "unet+resunet")
  for key, value, match in (("data.image_size", 63, "divisible"),
                            ("segmentation.class_weights", (1.0, 2.0, 3.0), "class_weights"),
                            ("segmentation.classes", "boxes", "segmentation.classes"),
                            ("model.kind", "maskrcnn", "model.kind")):
    config = load_config("configs/cygno.py", "smoke+resunet")
    section, field = key.split(".")
    setattr(config[section], field, value)
    with pytest.raises(ValueError, match=match):
      cygno_task.CygnoTask(config).validate()
  config = load_config("configs/cygno.py", "smoke+resunet")
  cygno_task.CygnoTask(config).validate()
  assert cygno_task.CygnoTask(config).segmentation
