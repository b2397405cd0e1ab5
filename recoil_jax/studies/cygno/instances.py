"""CYGNO instance segmentation: a mask, a box and an ER / NR class per track (seed 003's
Mask R-CNN row), from a fixed-shape, anchor-free network, scored by AP at IoU 0.5.

The thesis ran Mask R-CNN (arXiv 1703.06870) on 512² frames whose targets are, per track,
a polygon, a box, an area and an ER / NR category. This module gives the same outputs — per
track an instance mask on the pixel grid, its bounding box, a class (ER or NR) and a score —
and scores them the COCO way (arXiv 1405.0312), at IoU 0.5.

**Why not Mask R-CNN itself.** Its region-proposal stage keeps a data-dependent number of
boxes (top-k, then non-maximum suppression), samples positive and negative proposals per
image for its box and mask heads, and crops every proposal with RoIAlign: dynamic shapes,
which ``jit`` takes only when every stage is padded to a fixed maximum (scenic's
``projects/baselines/centernet/modeling/{roi_heads,nms}.py`` does that, REFERENCE §4b), and a
second, per-proposal network. The CYGNO frames hold a few compact tracks on a dark
background, so a bottom-up model fits better: one dense forward pass of fixed shape (trained
by the shared trainer exactly like the segmentation UNets, compiled once) and a decoder with
a fixed maximum number K of instances, also jitted. Outputs and metric are the same; the
inductive bias is not: masks are predicted on the full pixel grid (Mask R-CNN: a 28 × 28
mask per region, resampled to its box) and instances are found as centres (CenterNet,
arXiv 1904.07850) whose pixels vote for them (Panoptic-DeepLab, arXiv 1911.10194) instead
of as anchored boxes. Its weakness, measured (``configs/cygno.py``): long 20–40 keV ER
tracks, whose pixels must vote for a centre tens of pixels away, are mostly missed.

Layouts (B frames, H × W pixels, K = ``instances.max_instances``; rows first, pixel centres
at integer coordinates; boxes are (row0, col0, row1, col1) with exclusive ends, as
``sim.CygnoImages.tracks["box"]``; classes 1 ER / 2 NR as ``sim``)::

  image          float32 [B, H, W]      binary CNN input (the thesis') or asinh(counts / s)
  track_logits   float32 [B, H, W, 2]   noise / track per pixel
  type_logit     float32 [B, H, W]      log-odds of NR (vs ER) given track, per pixel
  class_logits   float32 [B, H, W, 3]   their log P(noise), log P(ER), log P(NR)
  heat_logit     float32 [B, H, W]      track-centre heatmap logit; sigmoid → heat in (0, 1)
  offset         float32 [B, H, W, 2]   (Δrow, Δcol) from the pixel to its track's centre, px
  instance_map   int16   [B, H, W]      0 = none, k + 1 = the frame's k-th detection
  inst_valid     bool    [B, K];  inst_score float32 [B, K];  inst_class int8 [B, K]
  inst_box       int32   [B, K, 4];  inst_pixels int32 [B, K];  inst_centre int32 [B, K, 2]
  inst_heat      float32 [B, K]         the instance's peak heat (its score before the class)

**Model** (:class:`CygnoInstanceNet`): the trunk is ``recoil_jax.nn.unet`` (``model.trunk``:
unet / resunet / attresunet; ``model.filters``) ending in a linear 1 × 1 projection to F_0
features; four heads, each Conv 3 × 3 (F_0) → ReLU → Conv 1 × 1: ``track_logits``,
``type_logit``, ``heat_logit`` (bias initialised to −log((1 − π) / π), π = 0.1, as
CenterNet) and ``offset`` (predicted in units of ``instances.offset_scale_px``). The pixel
class is factorised, P(ER) = P(track)(1 − q), P(NR) = P(track) q, so that ER vs NR has a
loss of its own, normalised over the track pixels (in one 3-class cross entropy it would
be a few per cent of the weighted loss: track pixels are ~1 % of a frame).

**Targets** (:func:`encode`, per frame from the simulation truth): a track's *instance* is
the set of pixels it owns (it is the brightest track there and gives ≥ the truth threshold:
``segmentation.build_images``' ``instance`` map); tracks owning no pixel are not instances.
Its centre c_k is the pixel nearest its noiseless-charge centroid
(``segmentation.charge_centroids``). ``label`` = the owner's class (0 noise);
``heatmap`` = max_k exp(−|p − c_k|² / 2σ²) (σ = ``instances.sigma_px``; exactly 1 at each
centre); ``offset`` = c_k − p on the pixels track k owns, 0 elsewhere.

**Loss** per frame (:func:`loss_terms`): per-pixel noise / track cross entropy
(``instances.class_weights``, light balance, ``losses.segmentation``) + ``type_weight`` ×
the binary cross entropy of ER / NR averaged over the owned pixels + ``heat_weight`` ×
CenterNet's focal loss (its eq. 1, α = 2, β = 4, divided by the frame's number of centres,
at least 1) + ``offset_weight`` × the mean L1 distance of the offsets (in units of
``offset_scale_px``) over the owned pixels.

**Decoding** (:func:`decode`, jnp, fixed shapes, run inside the model in evaluation mode):
1. peaks: heat = its 3 × 3 maximum and ≥ ``peak_threshold``; the K highest are the
   candidate centres;
2. foreground: argmax of the class logits ≠ noise;
3. every foreground pixel p votes for p + offset(p) and joins the candidate centre nearest
   its vote → ``instance_map``;
4. per instance: mask = its pixels, box = their bounding box, class = ER or NR by the larger
   mean probability over the mask, class probability = that mean / (mean P_ER + mean P_NR),
   score = peak heat × class probability. A centre that gathers no pixel is no instance.
On the encoded truth (one-hot class logits, the target heatmap and offsets) the decoder
returns the truth instances exactly, unless two tracks share a centre pixel
(``tests/test_cygno_instances.py``; :func:`oracle_outputs`: the analysis reports this
encoding ceiling).

**Evaluation** (:func:`evaluate`, numpy): per class c and for masks and boxes, detections of
class c are matched per frame in decreasing score order, each to the not yet matched truth
instance of class c with the highest IoU ≥ ``iou_threshold`` (COCO's rule; 0.5); a
detection matching nothing — a second detection of a taken truth, a detection whose class
is wrong, an IoU just below 0.5 — is a false positive. Over all frames, sorted by score
(stable), precision p_i = TP_i / i and recall r_i = TP_i / G; AP = Σ_i (r_i − r_{i−1}) ·
max_{j ≥ i} p_j (all-point interpolation, as PASCAL VOC 2010+; COCO samples the envelope
at 101 recall points instead, which can differ by about 0.01). Mask IoU counts pixels,
box IoU areas. A class without truth has AP None (left out of the mean). At the operating
point, a score cut chosen on the *validation* frames for the best class-agnostic mask F1
(``analysis.instances.tune_threshold``; else ``analysis.instances.score_threshold``),
precision TP / (TP + FP) and recall TP / G with Clopper–Pearson 68.27 % intervals.
"track (any class)" repeats everything with the classes ignored, which separates finding
tracks from naming them. Beside the network the analysis scores the decoded truth targets
(the encoding ceiling) and the classical chain's iDBSCAN clusters as class-less instances.
The analysis knobs live in ``config.analysis.instances``, so a trained run can be
re-analysed with ``config.mode="evaluate"``.

**Variable classes** (``analysis.instances.variable_classes``; :func:`fit_variable_classifier`,
:func:`classify_detections`): a second ER / NR name for the network's decoded masks, for
when the type head does not learn. A random forest (``classical.fit_random_forest``,
``analysis.num_trees`` trees, ``analysis.seed``) is fitted on the 14 cluster variables
(``observables.compute``, ``data.definitions``) of the *truth* masks of the training
frames (at most :data:`MAX_TRAIN_TRACKS` tracks) and applied to every decoded mask of the
validation and test frames. The variables are computed on the cache's ``counts``
(median_3(image − pedestal), camera counts, the "counts" input before its asinh): the only
intensity map the cache keeps. The classical chain's clusters take the unfiltered
pedestal-subtracted counts instead, which the filter smooths a little (δ, MaxDen,
SC_integral), but the forest is trained and applied on the same map. Masks with fewer
than ``reco.min_hits`` pixels (the classical chain's smallest cluster) get no variables:
they are left out of the training set and counted; such detections keep the network
head's class and score, also counted. Each other detection is named by the forest's
argmax (NR when P_RF(NR) > ½) and scored peak heat × P_RF(its class): the network's own
score with the forest's class probability in place of the head's (multiplying the
network's full score instead would keep the head's class probability, ≈ ½ and
uninformative when the head has not learned, in the ranking). Its score cut is tuned on
the validation frames like the network's (its own best class-agnostic mask F1). The
forest's accuracy on the test truth masks is reported beside it, separating what the
variables can do from what the decoded masks cost.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoil_jax import io
from recoil_jax.analysis import classification as clf
from recoil_jax.data import pipeline
from recoil_jax.losses import segmentation as seg_losses
from recoil_jax.nn import unet
from recoil_jax.studies.cygno import classical
from recoil_jax.studies.cygno import observables
from recoil_jax.studies.cygno import segmentation as seg
from recoil_jax.studies.cygno import sim

KIND = "instance"  # config.model.kind of this model.
INPUTS = ("binary", "counts")
CLASSES = {"ER": sim.ER, "NR": sim.NR}
ANY_CLASS = "track (any class)"
METRICS = ("track_loss", "type_loss", "heat_loss", "offset_loss", "pixel_iou",
           "type_accuracy")
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0  # CenterNet (arXiv 1904.07850) eq. 1.
HEAT_PRIOR = 0.1  # Initial heat: bias −log((1 − π) / π).


def validate(config) -> None:
  """Raises ValueError naming the config key of a bad instance-segmentation setting."""
  i, m, d = config.instances, config.model, config.data
  if i.input not in INPUTS:
    raise ValueError(f"config.instances.input={i.input!r}; known: {INPUTS}")
  if m.trunk not in unet.KINDS:
    raise ValueError(f"config.model.trunk={m.trunk!r}; known: {unet.KINDS}")
  depth = len(m.filters) - 1
  if depth < 1 or d.image_size % 2**depth:
    raise ValueError(f"config.data.image_size={d.image_size} must be divisible by "
                     f"2^(len(config.model.filters) - 1) = {2**max(depth, 0)}")
  if len(i.class_weights) != 2:
    raise ValueError(f"config.instances.class_weights={tuple(i.class_weights)} needs 2 "
                     "entries (noise, track)")
  for key in ("sigma_px", "offset_scale_px", "counts_scale"):
    if not i[key] > 0:
      raise ValueError(f"config.instances.{key}={i[key]} must be > 0")
  if not 0 < i.peak_threshold <= 1:
    raise ValueError(f"config.instances.peak_threshold={i.peak_threshold} must be in (0, 1]")
  if not 1 <= i.max_instances <= d.image_size**2:
    raise ValueError(f"config.instances.max_instances={i.max_instances} must be in "
                     f"[1, image_size²]")
  a = config.analysis.instances
  for key in ("score_threshold", "iou_threshold"):
    if not 0 < a[key] <= 1:
      raise ValueError(f"config.analysis.instances.{key}={a[key]} must be in (0, 1]")
  if len(a.energy_bins_kev) < 2 or np.any(np.diff(a.energy_bins_kev) <= 0):
    raise ValueError(f"config.analysis.instances.energy_bins_kev="
                     f"{tuple(a.energy_bins_kev)} must be at least 2 increasing edges")


# ----------------------------------------------------------------------------- targets
def centre_pixels(centroids: np.ndarray, height: int, width: int) -> np.ndarray:
  """int32 [n, 2]: the pixel (row, col) nearest each centroid [n, 2], inside the frame."""
  c = np.floor(np.asarray(centroids, np.float64) + 0.5).astype(np.int64)
  return np.stack([np.clip(c[:, 0], 0, height - 1), np.clip(c[:, 1], 0, width - 1)],
                  axis=1).astype(np.int32)


def encode(instance: np.ndarray, centres: np.ndarray, sigma_px: float
           ) -> tuple[np.ndarray, np.ndarray]:
  """The heatmap and offset targets of one frame (module docstring).

  Args:
    instance: int [H, W], 0 none, k + 1 where the frame's track k owns the pixel.
    centres: int [n, 2], the centre pixel of each of the frame's n tracks (k = 0 … n − 1;
      only tracks that own a pixel are used).
    sigma_px: the heatmap Gaussian's σ, pixels.

  Returns:
    ``(heatmap float32 [H, W], offset float32 [H, W, 2])``.
  """
  h, w = instance.shape
  rows = np.arange(h, dtype=np.float32)[:, None]
  cols = np.arange(w, dtype=np.float32)[None, :]
  heat = np.zeros((h, w), np.float32)
  offset = np.zeros((h, w, 2), np.float32)
  for k in np.unique(instance[instance > 0]) - 1:
    cy, cx = (float(v) for v in centres[k])
    g = np.exp(-((rows - cy)**2 + (cols - cx)**2) / np.float32(2 * sigma_px**2))
    heat = np.maximum(heat, g.astype(np.float32))
    own = instance == k + 1
    offset[own, 0] = cy - np.broadcast_to(rows, (h, w))[own]
    offset[own, 1] = cx - np.broadcast_to(cols, (h, w))[own]
  return heat, offset


def network_input(data: Mapping[str, np.ndarray], g: int, kind: str, counts_scale: float
                  ) -> np.ndarray:
  """float32 [H, W]: frame ``g``'s binary input (0/1) or asinh(counts / counts_scale)."""
  if kind == "binary":
    return data["input"][g].astype(np.float32)
  if kind == "counts":
    return np.arcsinh(data["counts"][g].astype(np.float32) / np.float32(counts_scale))
  raise ValueError(f"config.instances.input={kind!r}; known: {INPUTS}")


class FrameTracks:
  """The rows of the per-track arrays belonging to each frame (tracks sorted by frame)."""

  def __init__(self, data: Mapping[str, np.ndarray]):
    img = data["track_image"]
    if np.any(np.diff(img) < 0):
      raise ValueError("cygno instances: track_image must be sorted by frame")
    n = len(data["split"])
    self._start = np.searchsorted(img, np.arange(n), side="left")
    self._stop = np.searchsorted(img, np.arange(n), side="right")

  def rows(self, g: int) -> np.ndarray:
    """Rows (into the ``track_*`` arrays) of frame ``g``'s tracks, in track-index order."""
    return np.arange(self._start[g], self._stop[g])


class InstanceSource:
  """Frames of one split with their instance targets: ``image`` float32 [H, W], ``label``
  int32 [H, W] (0 noise / 1 ER / 2 NR), ``heatmap`` float32 [H, W], ``offset`` float32
  [H, W, 2], ``num_centres`` float32, ``image_index`` int32 (row in the cached set)."""

  def __init__(self, data: Mapping[str, np.ndarray], split: str, config):
    self._data, self._name = data, split
    i = config.instances
    self._input, self._scale, self._sigma = i.input, i.counts_scale, i.sigma_px
    self._rows = np.flatnonzero(data["split"] == seg.SPLITS.index(split)).astype(np.int32)
    self._tracks = FrameTracks(data)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    g = int(self._rows[pipeline.normalise_index(index, len(self._rows), self._name)])
    inst = self._data["instance"][g]
    h, w = inst.shape
    centres = centre_pixels(self._data["track_centroid"][self._tracks.rows(g)], h, w)
    heat, offset = encode(inst, centres, self._sigma)
    return {"image": network_input(self._data, g, self._input, self._scale),
            "label": self._data["pixel_label"][g].astype(np.int32),
            "heatmap": heat, "offset": offset,
            "num_centres": np.float32(len(np.unique(inst[inst > 0]))),
            "image_index": np.int32(g)}


# ----------------------------------------------------------------------------- model
def decode(class_logits: jax.Array, heat: jax.Array, offset: jax.Array, *,
           peak_threshold: float, max_instances: int) -> dict[str, jax.Array]:
  """Fixed-shape decoding (module docstring) of a batch of network outputs.

  Args:
    class_logits: [B, H, W, 3]; heat: [B, H, W] in [0, 1]; offset: [B, H, W, 2] pixels.
    peak_threshold: minimum heat of a centre.
    max_instances: K, the most instances per frame.

  Returns:
    ``instance_map`` int16 [B, H, W] and ``inst_valid``, ``inst_score``, ``inst_class``,
    ``inst_box``, ``inst_pixels``, ``inst_centre``, ``inst_heat`` (layouts in the module
    docstring; invalid slots have score 0, class 0, box 0, heat 0).
  """
  b, h, w, _ = class_logits.shape
  k = int(max_instances)
  heat = heat.astype(jnp.float32)
  pooled = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
  peak = (heat >= pooled) & (heat >= peak_threshold)
  top, idx = jax.lax.top_k(jnp.where(peak, heat, -1.0).reshape(b, h * w), k)
  valid = top >= peak_threshold  # [B, K]
  cy, cx = idx // w, idx % w
  rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  vy = rows + offset[..., 0].astype(jnp.float32)
  vx = cols + offset[..., 1].astype(jnp.float32)
  d2 = ((vy[..., None] - cy[:, None, None, :].astype(jnp.float32))**2
        + (vx[..., None] - cx[:, None, None, :].astype(jnp.float32))**2)
  d2 = jnp.where(valid[:, None, None, :], d2, jnp.inf)
  nearest = jnp.argmin(d2, axis=-1)  # [B, H, W]
  fg = (jnp.argmax(class_logits, axis=-1) != 0) & jnp.any(valid, axis=-1)[:, None, None]
  instance_map = jnp.where(fg, nearest + 1, 0)
  member = instance_map[..., None] == jnp.arange(1, k + 1)  # [B, H, W, K]
  pixels = jnp.sum(member, axis=(1, 2)).astype(jnp.int32)
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
  mf = member.astype(jnp.float32)
  p_er = jnp.einsum("bhwk,bhw->bk", mf, probs[..., sim.ER])
  p_nr = jnp.einsum("bhwk,bhw->bk", mf, probs[..., sim.NR])
  cls = jnp.where(p_nr > p_er, sim.NR, sim.ER)
  class_prob = jnp.maximum(p_er, p_nr) / jnp.maximum(p_er + p_nr, 1e-30)
  valid = valid & (pixels > 0)
  r_idx = jnp.arange(h)[None, :, None, None]
  c_idx = jnp.arange(w)[None, None, :, None]
  box = jnp.stack([jnp.min(jnp.where(member, r_idx, h), axis=(1, 2)),
                   jnp.min(jnp.where(member, c_idx, w), axis=(1, 2)),
                   jnp.max(jnp.where(member, r_idx, -1), axis=(1, 2)) + 1,
                   jnp.max(jnp.where(member, c_idx, -1), axis=(1, 2)) + 1], axis=-1)
  return {"instance_map": instance_map.astype(jnp.int16),
          "inst_valid": valid,
          "inst_score": jnp.where(valid, top * class_prob, 0.0),
          "inst_class": jnp.where(valid, cls, 0).astype(jnp.int8),
          "inst_box": jnp.where(valid[..., None], box, 0).astype(jnp.int32),
          "inst_pixels": pixels,
          "inst_centre": jnp.stack([cy, cx], axis=-1).astype(jnp.int32),
          "inst_heat": jnp.where(valid, top, 0.0)}


def class_log_probs(track_logits: jax.Array, type_logit: jax.Array) -> jax.Array:
  """[B, H, W, 3] log P(noise / ER / NR) from ``track_logits`` [B, H, W, 2] (noise,
  track) and ``type_logit`` [B, H, W] (log-odds of NR given track)."""
  lsm = jax.nn.log_softmax(track_logits.astype(jnp.float32), axis=-1)
  q = type_logit.astype(jnp.float32)
  return jnp.stack([lsm[..., 0], lsm[..., 1] + jax.nn.log_sigmoid(-q),
                    lsm[..., 1] + jax.nn.log_sigmoid(q)], axis=-1)


class CygnoInstanceNet(nn.Module):
  """``batch["image"]`` [B, H, W] → ``track_logits``, ``type_logit``, ``class_logits``
  (their log P(noise / ER / NR)), ``heat_logit``, ``offset`` (px); in evaluation mode also
  ``heatmap``, ``pred`` (argmax class, int8) and :func:`decode`'s outputs (module
  docstring)."""

  trunk: nn.Module  # A recoil_jax.nn.unet.UNet with num_classes = features.
  features: int
  offset_scale_px: float = 8.0
  peak_threshold: float = 0.05
  max_instances: int = 16

  def _head(self, x: jax.Array, out: int, name: str, bias_init=nn.initializers.zeros
            ) -> jax.Array:
    x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name=f"{name}_conv")(x))
    return nn.Conv(out, (1, 1), bias_init=bias_init, name=f"{name}_out")(x)

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], train: bool) -> dict[str, jax.Array]:
    x = self.trunk(batch["image"][..., None], train=train).astype(jnp.float32)
    prior = -float(np.log((1 - HEAT_PRIOR) / HEAT_PRIOR))
    track = self._head(x, 2, "track")
    nr = self._head(x, 1, "type")[..., 0]
    out = {"track_logits": track, "type_logit": nr,
           "class_logits": class_log_probs(track, nr),
           "heat_logit": self._head(x, 1, "heat", nn.initializers.constant(prior))[..., 0],
           "offset": self.offset_scale_px * self._head(x, 2, "offset")}
    if not train:
      heat = jax.nn.sigmoid(out["heat_logit"])
      out["heatmap"] = heat
      out["pred"] = jnp.argmax(out["class_logits"], axis=-1).astype(jnp.int8)
      out.update(decode(out["class_logits"], heat, out["offset"],
                        peak_threshold=self.peak_threshold,
                        max_instances=self.max_instances))
    return out


def build_model(config) -> CygnoInstanceNet:
  """The network of ``config.model`` / ``config.instances``."""
  m, i = config.model, config.instances
  f0 = int(m.filters[0])
  return CygnoInstanceNet(
      trunk=unet.make_unet(m.trunk, num_classes=f0, filters=tuple(m.filters)),
      features=f0, offset_scale_px=float(i.offset_scale_px),
      peak_threshold=float(i.peak_threshold), max_instances=int(i.max_instances))


# ----------------------------------------------------------------------------- loss
def heatmap_focal_loss(logit: jax.Array, target: jax.Array) -> jax.Array:
  """CenterNet's penalty-reduced focal loss summed per frame, [B] (not yet normalised).

  −(1 − p)^α log p at the centres (target = 1), −(1 − y)^β p^α log(1 − p) elsewhere.
  """
  logit = logit.astype(jnp.float32)
  p = jax.nn.sigmoid(logit)
  pos = (target >= 1.0 - 1e-6).astype(jnp.float32)
  l_pos = -((1 - p)**FOCAL_ALPHA) * jax.nn.log_sigmoid(logit)
  l_neg = -((1 - target)**FOCAL_BETA) * (p**FOCAL_ALPHA) * jax.nn.log_sigmoid(-logit)
  return jnp.sum(pos * l_pos + (1 - pos) * l_neg, axis=(1, 2))


def loss_terms(outputs: Mapping[str, jax.Array], batch: Mapping[str, Any], *,
               class_weights: Sequence[float], type_weight: float, heat_weight: float,
               offset_weight: float, offset_scale_px: float
               ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The trainer's ``{name: (sum, count)}``: ``loss``, its four parts, the track pixel IoU
  and the ER / NR accuracy of the owned pixels (module docstring)."""
  mask = batch["mask"].astype(jnp.float32)
  labels = batch["label"]
  owned = (labels > 0).astype(jnp.float32)
  ce = seg_losses.segmentation_loss(
      outputs["track_logits"][:, None], (labels > 0).astype(jnp.int32)[:, None],
      balance="light", normalisation="plane_weighted_mean",
      class_weights=tuple(class_weights))
  is_nr = (labels == sim.NR).astype(jnp.float32)
  q = outputs["type_logit"].astype(jnp.float32)
  bce = -(is_nr * jax.nn.log_sigmoid(q) + (1 - is_nr) * jax.nn.log_sigmoid(-q))
  n_owned = jnp.sum(owned, axis=(1, 2))
  typ = jnp.sum(bce * owned, axis=(1, 2)) / jnp.maximum(n_owned, 1.0)
  heat = heatmap_focal_loss(outputs["heat_logit"], batch["heatmap"]) / jnp.maximum(
      batch["num_centres"].astype(jnp.float32), 1.0)
  l1 = jnp.sum(jnp.abs(outputs["offset"] - batch["offset"]), axis=-1) / offset_scale_px
  off = jnp.sum(l1 * owned, axis=(1, 2)) / jnp.maximum(n_owned, 1.0)
  total = ce + type_weight * typ + heat_weight * heat + offset_weight * off
  n = jnp.sum(mask)
  pred = jnp.argmax(outputs["track_logits"], -1) > 0
  tp = jnp.sum(jnp.sum(pred & (labels > 0), axis=(1, 2)) * mask)
  union = jnp.sum(jnp.sum(pred | (labels > 0), axis=(1, 2)) * mask)
  right = jnp.sum(((q > 0) == (is_nr > 0)) * owned, axis=(1, 2))
  return {"loss": (jnp.sum(total * mask), n), "track_loss": (jnp.sum(ce * mask), n),
          "type_loss": (jnp.sum(typ * mask), n), "heat_loss": (jnp.sum(heat * mask), n),
          "offset_loss": (jnp.sum(off * mask), n), "pixel_iou": (tp, union),
          "type_accuracy": (jnp.sum(right * mask), jnp.sum(n_owned * mask))}


# ----------------------------------------------------------------------------- instances
@dataclasses.dataclass(frozen=True)
class FrameInstances:
  """The instances of one frame: ``masks`` bool [n, H, W], ``boxes`` int [n, 4] (row0,
  col0, row1, col1; exclusive ends), ``classes`` int [n] (1 ER, 2 NR), ``scores`` float
  [n] (1 for truth), ``energies`` float [n] (ionisation keV; NaN for detections)."""

  masks: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  scores: np.ndarray
  energies: np.ndarray

  def __len__(self) -> int:
    return len(self.classes)

  def with_classes(self, cls: int) -> FrameInstances:
    """The same instances, all of class ``cls`` (class-agnostic evaluation)."""
    return dataclasses.replace(self, classes=np.full(len(self), cls, np.int32))


def boxes_of(masks: np.ndarray) -> np.ndarray:
  """int32 [n, 4]: bounding boxes (row0, col0, row1, col1; exclusive) of masks [n, H, W];
  zeros for an empty mask."""
  out = np.zeros((len(masks), 4), np.int32)
  for i, m in enumerate(masks):
    r, c = np.nonzero(m)
    if len(r):
      out[i] = (r.min(), c.min(), r.max() + 1, c.max() + 1)
  return out


def from_map(instance_map: np.ndarray, ids: Sequence[int], classes: Sequence[int],
             scores: Sequence[float] | None = None,
             energies: Sequence[float] | None = None) -> FrameInstances:
  """Instances ``instance_map == id`` for each id (empty masks kept as given)."""
  ids = np.asarray(ids, np.int64)
  h, w = instance_map.shape
  masks = (instance_map[None] == ids[:, None, None]) if len(ids) else np.zeros((0, h, w), bool)
  n = len(ids)
  return FrameInstances(
      masks=masks, boxes=boxes_of(masks), classes=np.asarray(classes, np.int32).reshape(n),
      scores=np.ones(n) if scores is None else np.asarray(scores, np.float64).reshape(n),
      energies=np.full(n, np.nan) if energies is None else
      np.asarray(energies, np.float64).reshape(n))


def truth_instances(data: Mapping[str, np.ndarray], frames: Sequence[int]
                    ) -> list[FrameInstances]:
  """Per frame, its tracks that own at least one pixel (module docstring)."""
  tracks = FrameTracks(data)
  out = []
  for g in frames:
    rows = tracks.rows(int(g))
    inst = data["instance"][g]
    owned = np.isin(data["track_index"][rows] + 1, np.unique(inst[inst > 0]))
    rows = rows[owned]
    out.append(from_map(inst, data["track_index"][rows] + 1, data["track_cls"][rows],
                        energies=data["track_ionisation_kev"][rows]))
  return out


def detected_instances(pred: Mapping[str, np.ndarray]) -> list[FrameInstances]:
  """Per frame, the valid instances of :func:`decode`'s (numpy) outputs."""
  out = []
  for i in range(len(pred["inst_valid"])):
    k = np.flatnonzero(pred["inst_valid"][i])
    out.append(from_map(pred["instance_map"][i], k + 1, pred["inst_class"][i][k],
                        pred["inst_score"][i][k]))
  return out


def detected_heats(pred: Mapping[str, np.ndarray]) -> list[np.ndarray]:
  """Per frame, float [n] the peak heat of each valid instance (aligned with
  :func:`detected_instances`)."""
  return [pred["inst_heat"][i][pred["inst_valid"][i]].astype(np.float64)
          for i in range(len(pred["inst_valid"]))]


def clusters_as_instances(cluster_map: np.ndarray) -> FrameInstances:
  """The classical chain's clusters (``cluster_map`` k + 1 = cluster k) as class-less
  instances (class 1), scored by their number of hits (a ranking for AP)."""
  ids = np.unique(cluster_map[cluster_map > 0])
  f = from_map(cluster_map, ids, np.ones(len(ids), np.int32))
  return dataclasses.replace(f, scores=f.masks.sum((1, 2)).astype(np.float64))


def oracle_outputs(data: Mapping[str, np.ndarray], frames: Sequence[int], sigma_px: float
                   ) -> dict[str, np.ndarray]:
  """The network outputs a perfect model would give on ``frames``: one-hot class logits
  (± 10), the target heatmap and offsets (what :func:`decode` inverts)."""
  tracks = FrameTracks(data)
  logits, heats, offsets = [], [], []
  for g in frames:
    inst = data["instance"][g]
    h, w = inst.shape
    centres = centre_pixels(data["track_centroid"][tracks.rows(int(g))], h, w)
    heat, off = encode(inst, centres, sigma_px)
    onehot = data["pixel_label"][g][..., None] == np.arange(3)
    logits.append(np.where(onehot, 10.0, -10.0).astype(np.float32))
    heats.append(heat)
    offsets.append(off)
  return {"class_logits": np.stack(logits), "heat": np.stack(heats),
          "offset": np.stack(offsets)}


# ----------------------------------------------------------------------------- evaluation
def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float64 [n, m]: pixel IoU of masks a [n, H, W] and b [m, H, W] (0 when both empty)."""
  fa = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float64)
  fb = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float64)
  inter = fa @ fb.T
  union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-30), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float64 [n, m]: IoU of boxes a [n, 4] and b [m, 4] (row0, col0, row1, col1; exclusive)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]
  b = np.asarray(b, np.float64).reshape(-1, 4)[None]
  ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = ih * iw
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-30), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> np.ndarray:
  """int [D]: the truth each detection matches (−1: none; a false positive).

  ``iou`` [D, G] has the detections in decreasing score order; each takes the not yet
  matched truth with the highest IoU ≥ ``threshold`` (COCO's rule).
  """
  d, g = iou.shape
  taken = np.zeros(g, bool)
  out = np.full(d, -1, np.int64)
  for i in range(d):
    if not g:
      break
    cand = np.where(taken, -1.0, iou[i])
    j = int(np.argmax(cand))
    if cand[j] >= threshold:
      out[i], taken[j] = j, True
  return out


def average_precision(scores: np.ndarray, tp: np.ndarray, num_truth: int) -> float | None:
  """All-point interpolated AP of detections (``scores``, ``tp`` flags) against
  ``num_truth`` truths (module docstring); None without truth."""
  if num_truth == 0:
    return None
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  hit = np.asarray(tp, bool)[order]
  ctp = np.cumsum(hit)
  precision = ctp / np.arange(1, len(hit) + 1)
  recall = ctp / num_truth
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  prev = np.concatenate([[0.0], recall[:-1]])
  return float(np.sum((recall - prev) * envelope))


def _ratio(k: int, n: int) -> dict[str, Any]:
  lo, hi = clf.clopper_pearson(k, n)
  return {"value": float(k / n) if n else None, "interval": [float(lo), float(hi)]}


def match_class(truth: Sequence[FrameInstances], dets: Sequence[FrameInstances], cls: int,
                *, kind: str, iou_threshold: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray, int, list[np.ndarray]]:
  """Matches the class-``cls`` detections to the class-``cls`` truth, frame by frame.

  Returns ``(scores [D], hits [D] bool, number of truths, truth_score)``: the detections
  (frame by frame, each frame in decreasing score order), whether each is a true positive,
  and per frame per truth instance (of any class) the score of the detection that matched
  it (−inf if none, or if of another class). ``kind``: "mask" or "box" IoU.
  """
  if len(truth) != len(dets):
    raise ValueError(f"evaluate: {len(truth)} truth frames vs {len(dets)} detection frames")
  iou_fn = {"mask": lambda d, t: mask_iou(d.masks, t.masks),
            "box": lambda d, t: box_iou(d.boxes, t.boxes)}[kind]
  scores, hits, truth_score = [], [], []
  num_truth = 0
  for t, d in zip(truth, dets):
    ti = np.flatnonzero(t.classes == cls)
    di = np.flatnonzero(d.classes == cls)
    di = di[np.argsort(-d.scores[di], kind="stable")]
    match = greedy_match(iou_fn(_take(d, di), _take(t, ti)), iou_threshold)
    scores.append(d.scores[di])
    hits.append(match >= 0)
    ts = np.full(len(t), -np.inf)
    ts[ti[match[match >= 0]]] = d.scores[di][match >= 0]
    truth_score.append(ts)
    num_truth += len(ti)
  return (np.concatenate(scores + [np.zeros(0)]), np.concatenate(hits + [np.zeros(0, bool)]),
          num_truth, truth_score)


def evaluate_class(truth: Sequence[FrameInstances], dets: Sequence[FrameInstances], cls: int,
                   *, kind: str, iou_threshold: float = 0.5, score_threshold: float = 0.5
                   ) -> dict[str, Any]:
  """AP and the operating point of class ``cls`` for ``kind`` "mask" or "box".

  Returns ``ap``, ``num_truth``, ``num_detections``, ``tp`` / ``fp`` / ``fn`` and
  ``precision`` / ``recall`` (value and CP interval) at ``score_threshold``, and
  ``truth_score`` (:func:`match_class`).
  """
  s, hit, num_truth, truth_score = match_class(truth, dets, cls, kind=kind,
                                               iou_threshold=iou_threshold)
  on = s >= score_threshold
  tp, fp = int(np.sum(hit & on)), int(np.sum(~hit & on))
  return {"ap": average_precision(s, hit, num_truth), "num_truth": num_truth,
          "num_detections": int(len(s)), "tp": tp, "fp": fp, "fn": num_truth - tp,
          "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, num_truth),
          "truth_score": truth_score}


def best_f1_threshold(truth: Sequence[FrameInstances], dets: Sequence[FrameInstances], *,
                      iou_threshold: float = 0.5) -> tuple[float, float]:
  """``(threshold, F1)``: the score cut (keep scores ≥ it) with the best class-agnostic
  mask F1 = 2 TP / (2 TP + FP + FN); (1, 0) without truth or detections."""
  s, hit, g, _ = match_class([t.with_classes(1) for t in truth],
                             [d.with_classes(1) for d in dets], 1, kind="mask",
                             iou_threshold=iou_threshold)
  if not g or not len(s):
    return 1.0, 0.0
  order = np.argsort(-s, kind="stable")
  s, ctp = s[order], np.cumsum(hit[order])
  n = np.arange(1, len(s) + 1)
  f1 = 2 * ctp / (n + g)  # 2 TP / (2 TP + FP + FN) with FP + TP = n, TP + FN = g.
  last = np.append(s[1:] != s[:-1], True)  # A cut keeps every tie of its score.
  best = int(np.argmax(np.where(last, f1, -1.0)))
  return float(s[best]), float(f1[best])


def _take(f: FrameInstances, idx: np.ndarray) -> FrameInstances:
  return FrameInstances(f.masks[idx], f.boxes[idx], f.classes[idx], f.scores[idx],
                        f.energies[idx])


def evaluate(truth: Sequence[FrameInstances], dets: Sequence[FrameInstances], *,
             classes: Mapping[str, int] = CLASSES, iou_threshold: float = 0.5,
             score_threshold: float = 0.5, class_agnostic: bool = True
             ) -> dict[str, dict[str, Any]]:
  """``{kind: {class name: evaluate_class(...), "mean": mean AP}}`` for masks and boxes,
  per class of ``classes`` and (``class_agnostic``) for ``ANY_CLASS``."""
  out: dict[str, dict[str, Any]] = {}
  kw = dict(iou_threshold=iou_threshold, score_threshold=score_threshold)
  for kind in ("mask", "box"):
    res = {name: evaluate_class(truth, dets, c, kind=kind, **kw)
           for name, c in classes.items()}
    aps = [r["ap"] for r in res.values() if r["ap"] is not None]
    res["mean"] = float(np.mean(aps)) if aps else None
    if class_agnostic:
      res[ANY_CLASS] = evaluate_class([t.with_classes(1) for t in truth],
                                      [d.with_classes(1) for d in dets], 1, kind=kind, **kw)
    out[kind] = res
  return out


def efficiency_vs_energy(truth: Sequence[FrameInstances], truth_score: Sequence[np.ndarray],
                         cls: int, bins: Sequence[float], score_threshold: float
                         ) -> list[dict[str, Any]]:
  """Per ionisation-energy bin [lo, hi): the fraction of class-``cls`` truth instances
  matched by a detection scoring ≥ ``score_threshold``: ``truth`` has the true classes,
  ``truth_score`` (from :func:`evaluate_class`, aligned with it) says which matched."""
  e = np.concatenate([t.energies[t.classes == cls] for t in truth] + [np.zeros(0)])
  hit = np.concatenate([s[t.classes == cls] >= score_threshold
                        for t, s in zip(truth, truth_score)] + [np.zeros(0, bool)])
  return seg.track_efficiency(hit, e, tuple(bins))


def strip(result: Mapping[str, Any]) -> Any:
  """``result`` without the per-truth arrays (for JSON)."""
  if isinstance(result, Mapping):
    return {k: strip(v) for k, v in result.items() if k != "truth_score"}
  return result


# ----------------------------------------------------------------------------- variable classes
VARIABLE_CLASSES = "network masks + variable RF classes"  # The method's row name.
#: The most truth tracks that train the variable classifier (the first training frames in
#: cache order, itself a seeded permutation, until the cap). The variables cost ~13 ms a
#: track on the CPU (2–40 keV, 128² frames); a few thousand tracks are plenty for an RF.
MAX_TRAIN_TRACKS = 3000


def mask_features(masks: np.ndarray, counts: np.ndarray, *, min_pixels: int,
                  definitions: Mapping[str, str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The 14 cluster variables of each mask of one frame.

  Args:
    masks: bool [n, H, W], one instance each.
    counts: [H, W] the frame's camera counts (the cache's ``counts``).
    min_pixels: masks with fewer pixels get no variables.
    definitions: ``observables.compute``'s variable definitions.

  Returns:
    ``(features float64 [n, 14] in ``observables.NAMES`` order (lengths in pixels,
    intensities in counts), ok bool [n])``; the rows of masks with < ``min_pixels``
    pixels (``ok`` False) are NaN.
  """
  masks, counts = np.asarray(masks, bool), np.asarray(counts, np.float64)
  x = np.full((len(masks), len(observables.NAMES)), np.nan)
  ok = masks.sum(axis=(1, 2)) >= max(int(min_pixels), 1)
  for k in np.flatnonzero(ok):
    r, c = np.nonzero(masks[k])
    v = observables.compute(r, c, counts[r, c], definitions)
    x[k] = [v[name] for name in observables.NAMES]
  return x, ok


@dataclasses.dataclass(frozen=True)
class VariableClassifier:
  """ER / NR from the 14 variables of a mask (module docstring): ``model`` a fitted
  scikit-learn forest (labels 0 ER, 1 NR, as ``classical.py``), or None when the training
  masks hold one class only, ``only_class`` (0 / 1); ``stats`` says what trained it."""

  model: Any
  only_class: int | None
  min_pixels: int
  definitions: Mapping[str, str] | None
  stats: Mapping[str, Any]

  def nr_probability(self, x: np.ndarray) -> np.ndarray:
    """float64 [n]: P(NR) of features [n, 14]."""
    if not len(x):
      return np.zeros(0)
    if self.model is None:
      return np.full(len(x), float(self.only_class))
    return classical.nr_probability(self.model, x).astype(np.float64)

  def features(self, masks: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mask_features` with this classifier's minimum size and definitions."""
    return mask_features(masks, counts, min_pixels=self.min_pixels,
                         definitions=self.definitions)


def fit_variable_classifier(data: Mapping[str, np.ndarray], frames: Sequence[int], *,
                            min_pixels: int, definitions: Mapping[str, str] | None = None,
                            num_trees: int = 400, seed: int = 0, n_jobs: int = 1,
                            max_tracks: int = MAX_TRAIN_TRACKS) -> VariableClassifier:
  """Fits the variable classifier on the truth masks (:func:`truth_instances`) of
  ``frames`` (the training split) and their ``data["counts"]``, in the given frame order
  until ``max_tracks`` tracks. Masks with < ``min_pixels`` pixels are skipped and counted
  (``stats["too_small"]``).

  Raises:
    ValueError: no truth mask of ``frames`` has ``min_pixels`` pixels.
  """
  xs, ys, too_small, used, kept = [], [], 0, 0, 0
  for g in frames:
    if kept >= max_tracks:
      break
    (t,) = truth_instances(data, [int(g)])
    x, ok = mask_features(t.masks, data["counts"][g], min_pixels=min_pixels,
                          definitions=definitions)
    too_small += int(np.sum(~ok))
    xs.append(x[ok])
    ys.append((t.classes[ok] == sim.NR).astype(np.int32))  # 1 NR, 0 ER.
    used, kept = used + 1, kept + int(ok.sum())
  x = np.concatenate(xs + [np.zeros((0, len(observables.NAMES)))])[:max_tracks]
  y = np.concatenate(ys + [np.zeros(0, np.int32)])[:max_tracks]
  if not len(y):
    raise ValueError(f"cygno instances: no truth track of the {len(frames)} training frames "
                     f"has >= {min_pixels} pixels to train the variable classifier; set "
                     "config.analysis.instances.variable_classes=False")
  stats = {"tracks": int(len(y)), "er": int(np.sum(y == 0)), "nr": int(np.sum(y == 1)),
           "too_small": too_small, "min_pixels": int(min_pixels), "frames": used,
           "frames_available": int(len(frames)), "max_tracks": int(max_tracks),
           "num_trees": int(num_trees)}
  if len(np.unique(y)) < 2:  # A forest of one class has no P(NR) column.
    return VariableClassifier(None, int(y[0]), int(min_pixels), definitions, stats)
  model = classical.fit_random_forest(x, y, num_trees=num_trees, seed=seed, n_jobs=n_jobs)
  return VariableClassifier(model, None, int(min_pixels), definitions, stats)


def classify_detections(vc: VariableClassifier, dets: Sequence[FrameInstances],
                        heats: Sequence[np.ndarray], counts: Sequence[np.ndarray]
                        ) -> tuple[list[FrameInstances], dict[str, int]]:
  """The detections renamed by the variable classifier (module docstring).

  Args:
    vc: the fitted classifier.
    dets: per frame, the network's detections.
    heats: per frame, float [n] each detection's peak heat (:func:`detected_heats`).
    counts: per frame, [H, W] its camera counts (the cache's ``counts``).

  Returns:
    ``(per frame the same masks and boxes with class = argmax P_RF and score = peak heat ×
    P_RF(class) — detections with < ``vc.min_pixels`` pixels keep the network's class and
    score —, {"detections", "classified", "too_small"})``.
  """
  out, n_ok, n_small = [], 0, 0
  for d, heat, img in zip(dets, heats, counts, strict=True):
    x, ok = vc.features(d.masks, img)
    p_nr = np.full(len(d), np.nan)
    p_nr[ok] = vc.nr_probability(x[ok])
    nr = p_nr > 0.5  # Argmax; a tie is ER, as decode's.
    classes = np.where(ok, np.where(nr, sim.NR, sim.ER), d.classes).astype(np.int32)
    scores = np.where(ok, np.asarray(heat, np.float64) * np.where(nr, p_nr, 1 - p_nr),
                      d.scores)
    out.append(dataclasses.replace(d, classes=classes, scores=scores))
    n_ok, n_small = n_ok + int(ok.sum()), n_small + int((~ok).sum())
  return out, {"detections": n_ok + n_small, "classified": n_ok, "too_small": n_small}


def truth_mask_accuracy(vc: VariableClassifier, truth: Sequence[FrameInstances],
                        counts: Sequence[np.ndarray]) -> dict[str, Any]:
  """Per class, the fraction (CP 68.27 %) of truth masks with ≥ ``vc.min_pixels`` pixels
  that the classifier names right; the number too small to name; the AUC of P_RF(NR)
  (NR vs ER; None without both), comparable with the classification table's."""
  p_nr, cls, small = [np.zeros(0)], [np.zeros(0, np.int32)], 0
  for t, img in zip(truth, counts, strict=True):
    x, ok = vc.features(t.masks, img)
    p_nr.append(vc.nr_probability(x[ok]))
    cls.append(t.classes[ok])
    small += int((~ok).sum())
  p, c = np.concatenate(p_nr), np.concatenate(cls)
  pred = np.where(p > 0.5, sim.NR, sim.ER)
  out = {name: _ratio(int(np.sum(pred[c == v] == v)), int(np.sum(c == v)))
         | {"tracks": int(np.sum(c == v))} for name, v in CLASSES.items()}
  both = np.any(c == sim.NR) and np.any(c == sim.ER)
  return out | {"too_small": small,
                "auc": clf.auc(p[c == sim.NR], p[c == sim.ER]) if both else None}


# ----------------------------------------------------------------------------- analysis
def _fmt(x: float | None, digits: int = 3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def _fmt_ratio(r: Mapping[str, Any]) -> str:
  if r["value"] is None:
    return "–"
  lo, hi = r["interval"]
  return f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(methods: Mapping[str, Mapping[str, Any]],
             efficiency: Mapping[str, Mapping[str, list[dict]]], *, score_threshold: float,
             iou_threshold: float, provenance: str = "", label: str = io.SIMULATED,
             row_thresholds: Mapping[str, tuple[float, str]] | None = None,
             notes: Sequence[str] = ()) -> str:
  """The AP / precision / recall table beside the thesis' Mask R-CNN row, and the
  detection efficiency vs energy. ``row_thresholds``: ``{method: (score cut,
  provenance)}`` for rows (and efficiency columns of that name) with their own cut;
  ``notes``: paragraphs appended at the end."""
  t = f"{score_threshold:.3g}"
  own = dict(row_thresholds or {})
  own_text = "".join(f" The {n} row: score ≥ {c:.3g} ({p})." for n, (c, p) in own.items())
  own_cols = "".join(f" (the {n} column: score ≥ {c:.3g})" for n, (c, _) in own.items())
  lines = [f"## Instance segmentation on the test frames ({label})", "",
           f"AP at IoU {iou_threshold:g} (all-point interpolation); precision and recall at "
           f"score ≥ {t}" + (f" ({provenance})" if provenance else "") +
           f" with mask IoU ≥ {iou_threshold:g} (Clopper–Pearson 68.27 %); the classical "
           "row keeps every cluster." + own_text, "",
           "| method | class | mask AP50 | box AP50 | precision | recall | truth tracks |",
           "|---|---|---|---|---|---|---|"]
  for name, res in methods.items():
    m, b = res["mask"], res["box"]
    for cls in [c for c in m if c != "mean"]:
      lines.append(f"| {name} ({label}) | {cls} | {_fmt(m[cls]['ap'])} | "
                   f"{_fmt(b[cls]['ap'])} | {_fmt_ratio(m[cls]['precision'])} | "
                   f"{_fmt_ratio(m[cls]['recall'])} | {m[cls]['num_truth']} |")
      if cls == list(CLASSES)[-1] and m.get("mean") is not None:
        lines.append(f"| {name} ({label}) | mean ({', '.join(CLASSES)}) | "
                     f"{_fmt(m['mean'])} | {_fmt(b['mean'])} | | | |")
  lines.append("| thesis Mask R-CNN (seed 003) | ER, NR | not reported | not reported | "
               "not reported | not reported | trained on 4 images for 20 epochs; one "
               "display shown |")
  for cls, curves in efficiency.items():
    names = list(curves)
    lines += ["", f"## {cls} detection efficiency [%] vs ionisation energy ({label})", "",
              f"A truth {cls} track is detected when a detection of class {cls} (of "
              f"either class in the any-class columns) with score ≥ {t}{own_cols} has mask "
              f"IoU ≥ {iou_threshold:g} with it (tracks owning no pixel are not instances).",
              "",
              "| energy [keV] | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, b in enumerate(next(iter(curves.values()))):
      lo, hi = b["energy_kev"]
      cells = []
      for n in names:
        c = curves[n][i]
        cells.append("–" if not c["tracks"] else
                     f"{100 * c['efficiency']:.1f} [{100 * c['interval'][0]:.1f}, "
                     f"{100 * c['interval'][1]:.1f}] ({c['reconstructed']}/{c['tracks']})")
      lines.append(f"| {lo:g}–{hi:g} | " + " | ".join(cells) + " |")
  lines += ["", "The classical row takes each iDBSCAN cluster as a class-less instance "
            "scored by its number of hits (it has no ER/NR label). The oracle row decodes "
            "the training targets of the truth: its shortfall from 1 counts tracks that "
            "share a centre pixel. The thesis shows Mask R-CNN predictions on a display "
            "only (seed 003); it gives no AP. Everything here is simulated."]
  for note in notes:
    lines += ["", note]
  return "\n".join(lines) + "\n"


# Instance colours (black = none), avoiding the box colours (ER cyan, NR red).
_PALETTE = np.array([[0, 0, 0], [60, 180, 75], [255, 225, 25], [245, 130, 48],
                     [145, 30, 180], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                     [0, 128, 128], [170, 110, 40], [255, 250, 200]], np.float32) / 255


def _colour(instance_map: np.ndarray) -> np.ndarray:
  m = np.asarray(instance_map, np.int64)
  return _PALETTE[np.where(m > 0, 1 + (m - 1) % (len(_PALETTE) - 1), 0)]


def plot_displays(path: str, rows: Sequence[Mapping[str, Any]], *,
                  score_threshold: float | None = None, label: str = io.SIMULATED) -> str:
  """One row per frame: network input, truth instances, predicted instances (boxes, class,
  score). Each row: ``image`` [H, W], ``truth`` and ``pred`` :class:`FrameInstances`."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top

  names = {sim.ER: "ER", sim.NR: "NR"}
  cols = ("input", "truth", "prediction")
  fig = Figure(figsize=(3.0 * len(cols), 3.0 * len(rows) + 0.4))
  for r, row in enumerate(rows):
    for c, name in enumerate(cols):
      ax = fig.add_subplot(len(rows), len(cols), r * len(cols) + c + 1)
      if name == "input":
        ax.imshow(row["image"], cmap="gray", interpolation="nearest")
      else:
        inst: FrameInstances = row[name if name == "truth" else "pred"]
        m = np.zeros(row["image"].shape, np.int64)
        for k, mask in enumerate(inst.masks):
          m[mask] = k + 1
        ax.imshow(_colour(m), interpolation="nearest")
        for k in range(len(inst)):
          r0, c0, r1, c1 = inst.boxes[k]
          colour = "red" if inst.classes[k] == sim.NR else "cyan"
          ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                                 edgecolor=colour, linewidth=1.0))
          text = names.get(int(inst.classes[k]), "?")
          if name == "prediction":
            text += f" {inst.scores[k]:.2f}"
          else:
            text += f" {inst.energies[k]:.1f} keV"
          ax.text(c0, r0 - 1, text, color=colour, fontsize=6, va="bottom")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(name if name != "prediction" or score_threshold is None else
                     f"prediction (score ≥ {score_threshold:.2f})", fontsize=9)
  fig.suptitle(f"CYGNO instance segmentation, test frames ({label}); boxes: ER cyan, NR red",
               fontsize=10)
  return io.save_figure_atomic(fig, path, dpi=110, bbox_inches="tight")


def _decode_numpy(outputs: Mapping[str, np.ndarray], config, batch: int = 16
                  ) -> dict[str, np.ndarray]:
  """:func:`decode` (jitted, ``batch`` frames at a time) of numpy network outputs."""
  i = config.instances
  fn = jax.jit(lambda o: decode(o["class_logits"], o["heat"], o["offset"],
                                peak_threshold=i.peak_threshold,
                                max_instances=i.max_instances))
  parts: dict[str, list] = {}
  n = len(outputs["heat"])
  for s in range(0, n, batch):
    for k, v in jax.tree.map(np.asarray, fn({k: v[s:s + batch] for k, v in
                                             outputs.items()})).items():
      parts.setdefault(k, []).append(v)
  return {k: np.concatenate(v) for k, v in parts.items()}


def _predict(trained, split: str
             ) -> tuple[np.ndarray, list[FrameInstances], list[np.ndarray]]:
  """``(frame indices [N], per frame the network's detections, their peak heats)``."""
  outs = ("instance_map", "inst_valid", "inst_score", "inst_class", "inst_heat")
  pred = trained.predict(split, outputs=outs, fields=("image_index",))
  return (pred["image_index"].astype(np.int64), detected_instances(pred["outputs"]),
          detected_heats(pred["outputs"]))


def operating_threshold(config, data: Mapping[str, np.ndarray], trained, *,
                        validation: tuple[np.ndarray, Sequence[FrameInstances]] | None = None
                        ) -> tuple[float, str]:
  """The score cut of the precision / recall columns and its provenance: the best
  class-agnostic mask F1 on the validation frames (``analysis.instances.tune_threshold``)
  or ``analysis.instances.score_threshold``. ``validation``: ``(frames, detections)``
  already at hand (else the network predicts them)."""
  a = config.analysis.instances
  if not a.tune_threshold:
    return float(a.score_threshold), "config.analysis.instances.score_threshold"
  frames, dets = validation if validation is not None else _predict(trained,
                                                                    "validation")[:2]
  thr, f1 = best_f1_threshold(truth_instances(data, frames), dets,
                              iou_threshold=a.iou_threshold)
  return thr, (f"best class-agnostic mask F1 ({f1:.3f}) on the {len(frames)} validation "
               "frames")


def variable_class_row(config, data: Mapping[str, np.ndarray], trained, *,
                       test: tuple[np.ndarray, Sequence[FrameInstances], Sequence[np.ndarray]],
                       validation: tuple | None, truth: Sequence[FrameInstances]
                       ) -> tuple[list[FrameInstances], float, str, dict[str, Any]]:
  """The :data:`VARIABLE_CLASSES` method (module docstring) on the test frames.

  Args:
    test, validation: ``(frames, detections, peak heats)`` of :func:`_predict` (validation
      None: predicted here when the cut is tuned).
    truth: the test frames' truth instances.

  Returns:
    ``(test detections, score cut, its provenance, summary for the JSON)``.
  """
  a, an = config.analysis.instances, config.analysis
  train = np.flatnonzero(data["split"] == seg.SPLITS.index("train"))
  vc = fit_variable_classifier(
      data, train, min_pixels=config.reco.min_hits, definitions=dict(config.data.definitions),
      num_trees=an.num_trees, seed=an.seed, n_jobs=an.n_jobs)
  counts = lambda frames: [data["counts"][g] for g in frames]  # noqa: E731
  frames, dets, heats = test
  out, test_stats = classify_detections(vc, dets, heats, counts(frames))
  summary = {"method": VARIABLE_CLASSES, "variables": list(observables.NAMES),
             "image": "counts: median_3(image - pedestal), camera counts",
             "definitions": dict(config.data.definitions),
             "score": "peak heat x P_RF(assigned class)", "train": dict(vc.stats),
             "test_detections": test_stats,
             "test_truth_mask_accuracy": truth_mask_accuracy(vc, truth, counts(frames))}
  if a.tune_threshold:
    if validation is None:
      validation = _predict(trained, "validation")
    v_frames, v_dets, v_heats = validation
    v_out, summary["validation_detections"] = classify_detections(vc, v_dets, v_heats,
                                                                   counts(v_frames))
    thr, f1 = best_f1_threshold(truth_instances(data, v_frames), v_out,
                                iou_threshold=a.iou_threshold)
    provenance = (f"its best class-agnostic mask F1 ({f1:.3f}) on the {len(v_frames)} "
                  "validation frames")
  else:
    thr, provenance = float(a.score_threshold), "config.analysis.instances.score_threshold"
  summary |= {"score_threshold": thr, "score_threshold_from": provenance}
  return out, thr, provenance, summary


def _variable_class_note(s: Mapping[str, Any]) -> str:
  """The markdown paragraph on the :data:`VARIABLE_CLASSES` row from its JSON summary."""
  tr, te, acc = s["train"], s["test_detections"], s["test_truth_mask_accuracy"]
  return (f"The {VARIABLE_CLASSES} row keeps the network's masks and boxes and names each "
          f"instance ER or NR by a random forest ({tr['num_trees']} trees) on the 14 cluster "
          "variables of its mask, computed on the median-filtered pedestal-subtracted counts; "
          "score = peak heat × P_RF(its class). The forest was trained on the truth masks "
          f"of {tr['tracks']} tracks ({tr['er']} ER, {tr['nr']} NR) of {tr['frames']} "
          f"training frames, skipping {tr['too_small']} masks with < {tr['min_pixels']} "
          f"pixels. On the test truth masks it names {_fmt_ratio(acc['ER'])} of "
          f"{acc['ER']['tracks']} ER and {_fmt_ratio(acc['NR'])} of {acc['NR']['tracks']} NR "
          f"right (AUC {_fmt(acc['auc'])}; {acc['too_small']} too small to name). "
          f"{te['too_small']} of the "
          f"{te['detections']} test detections have < {tr['min_pixels']} pixels and keep "
          "the network head's class and score.")


def analyse(config, data: Mapping[str, np.ndarray], trained, workdir: str) -> dict[str, Any]:
  """AP tables, efficiency vs energy and event displays on the test frames (module
  docstring); writes ``cygno_instances.md``, ``cygno_instances.json`` and
  ``instance_displays.png`` into ``workdir``."""
  i, a, m = config.instances, config.analysis.instances, config.model
  frames, net_dets, net_heats = _predict(trained, "test")
  if not np.all(data["classical_done"][frames]):
    raise ValueError("cygno instances: the classical maps of the test frames are missing")
  validation = _predict(trained, "validation") if a.tune_threshold else None
  threshold, provenance = operating_threshold(
      config, data, trained, validation=None if validation is None else validation[:2])
  truth = truth_instances(data, frames)
  net = f"network ({KIND}, {m.trunk} trunk, {i.input} input)"
  oracle = "truth targets decoded (oracle)"
  dets = {net: net_dets,
          oracle: detected_instances(_decode_numpy(oracle_outputs(data, frames, i.sigma_px),
                                                   config))}
  kw = dict(iou_threshold=a.iou_threshold, score_threshold=threshold)
  results = {name: evaluate(truth, d, **kw) for name, d in dets.items()}
  # The classical chain: every iDBSCAN cluster is a detection (score = hits, cut at 0).
  cl_name = "classical (threshold + iDBSCAN clusters)"
  results[cl_name] = evaluate(
      [t.with_classes(1) for t in truth],
      [clusters_as_instances(data["classical"][g]) for g in frames],
      classes={ANY_CLASS: 1}, class_agnostic=False, iou_threshold=a.iou_threshold,
      score_threshold=0.0)
  own_cut, notes, vc_summary = {}, [], None
  if a.variable_classes:  # Read here, so config.mode="evaluate" can switch it.
    vc_dets, vc_thr, vc_from, vc_summary = variable_class_row(
        config, data, trained, test=(frames, net_dets, net_heats), validation=validation,
        truth=truth)
    results[VARIABLE_CLASSES] = evaluate(truth, vc_dets, iou_threshold=a.iou_threshold,
                                         score_threshold=vc_thr)
    results = {k: results[k] for k in (net, VARIABLE_CLASSES, oracle, cl_name)}
    own_cut[VARIABLE_CLASSES] = (vc_thr, vc_from)
    notes.append(_variable_class_note(vc_summary))
  bins = tuple(a.energy_bins_kev)
  efficiency: dict[str, dict[str, list]] = {}
  for cname, c in CLASSES.items():
    efficiency[cname] = {
        net: efficiency_vs_energy(truth, results[net]["mask"][cname]["truth_score"], c,
                                  bins, threshold),
        f"{net}, any class": efficiency_vs_energy(
            truth, results[net]["mask"][ANY_CLASS]["truth_score"], c, bins, threshold)}
    if a.variable_classes:
      efficiency[cname][VARIABLE_CLASSES] = efficiency_vs_energy(
          truth, results[VARIABLE_CLASSES]["mask"][cname]["truth_score"], c, bins,
          own_cut[VARIABLE_CLASSES][0])
    efficiency[cname][f"{cl_name}, any class"] = efficiency_vs_energy(
        truth, results[cl_name]["mask"][ANY_CLASS]["truth_score"], c, bins, 0.0)
  md = markdown(results, efficiency, score_threshold=threshold, provenance=provenance,
                iou_threshold=a.iou_threshold, row_thresholds=own_cut, notes=notes)
  io.write_text_atomic(os.path.join(workdir, "cygno_instances.md"), md)
  order = np.argsort([-len(t) for t in truth], kind="stable")[:min(a.num_displays,
                                                                  len(frames))]
  if len(order):
    plot_displays(os.path.join(workdir, "instance_displays.png"), [
        {"image": network_input(data, int(frames[j]), i.input, i.counts_scale),
         "truth": truth[j],
         "pred": _take(net_dets[j], np.flatnonzero(net_dets[j].scores >= threshold))}
        for j in order], score_threshold=threshold)
  summary = {"data": io.SIMULATED, "step": trained.step, "kind": KIND, "trunk": m.trunk,
             "input": i.input, "num_test_frames": int(len(frames)),
             "num_truth_instances": int(sum(len(t) for t in truth)),
             "iou_threshold": a.iou_threshold, "score_threshold": threshold,
             "score_threshold_from": provenance,
             "results": strip(results), "efficiency": efficiency,
             "thesis_mask_rcnn": "no AP reported (seed 003: trained on 4 images, 20 "
                                 "epochs; one display)"}
  if vc_summary is not None:
    summary["variable_classes"] = vc_summary
  io.write_json_atomic(os.path.join(workdir, "cygno_instances.json"), summary)
  logging.info("CYGNO instance analysis written to %s", workdir)
  ap50 = lambda r, kind: ({c: r[kind][c]["ap"] for c in (*CLASSES, ANY_CLASS)}  # noqa: E731
                          | {"mean": r[kind]["mean"]})
  out = {"mask_ap50": ap50(results[net], "mask"), "box_ap50": ap50(results[net], "box"),
         "score_threshold": threshold}
  if vc_summary is not None:
    out["variable_classes_mask_ap50"] = ap50(results[VARIABLE_CLASSES], "mask")
  return out
