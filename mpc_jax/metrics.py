"""Forgery-localization metrics (numpy, vectorised), with the MPC reference's conventions.

Per image (`prob` [H, W] in [0, 1] at the ground truth's size, `gt` [H, W] in {0, 1}): pixel F1 and IoU
of `prob > threshold` (0.5; the reference's `prob * 255 > 127` differs only in (0.498, 0.5]), best-threshold
F1 and pixel AUC from `bins`-bin score histograms, and an image score (max of `prob`; an image is forged iff
its mask has a positive pixel). `Evaluator` accumulates images one at a time (memory O(bins), not
O(pixels)) and aggregates over **forged** images and over **all** images. The paper's tables
(`stage2/test.py` of the reference) are `forged['f1']` and `forged['iou']`: the mean over images of
per-image F1 / IoU at 0.5, on test lists that hold manipulated images only.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import cv2
import numpy as np

DEFAULT_BINS = 1000


# ----------------------------------------------------------------------------------------- primitives
def resize_prob(prob: np.ndarray, hw: Sequence[int]) -> np.ndarray:
  """Bilinear resize (cv2 INTER_LINEAR, half-pixel centres, like the reference) of `prob` [h, w] to `hw`."""
  prob = np.asarray(prob, np.float32)
  if prob.ndim == 3:
    prob = prob[..., 0]
  h, w = int(hw[0]), int(hw[1])
  if prob.shape == (h, w):
    return prob
  return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


def confusion_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """Pixel counts of `pred`, `gt` (bool/{0,1}, [..., H, W]) -> int64 [..., 4] = (TP, FP, FN, TN) per image."""
  pred = np.asarray(pred).astype(bool)
  gt = np.asarray(gt).astype(bool)
  axes = (-2, -1)
  tp = np.sum(pred & gt, axis=axes, dtype=np.int64)
  fp = np.sum(pred & ~gt, axis=axes, dtype=np.int64)
  fn = np.sum(~pred & gt, axis=axes, dtype=np.int64)
  n = np.int64(pred.shape[-2] * pred.shape[-1])
  return np.stack([tp, fp, fn, n - tp - fp - fn], axis=-1)


def f1_from_counts(tp, fp, fn) -> np.ndarray:
  """F1 = 2TP / (2TP + FP + FN), 0 where the denominator is 0 (empty mask and empty prediction)."""
  tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
  den = 2 * tp + fp + fn
  return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def iou_from_counts(tp, fp, fn) -> np.ndarray:
  """IoU = TP / (TP + FP + FN), 1 where the union is empty (reference convention)."""
  tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
  union = tp + fp + fn
  return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


def pixel_f1(prob, gt, threshold: float = 0.5) -> np.ndarray:
  """Per-image F1 of `prob > threshold` against `gt`; [..., H, W] -> [...].

  F1 = 2TP / (2TP + FP + FN), **0 when the mask and the prediction are both empty** (scikit-learn's
  `f1_score(zero_division=0)`, which the reference calls), so an authentic image always scores F1 = 0.
  The reference thresholds `prob * 255 > 127`, i.e. `prob > 0.498`; only pixels in (0.498, 0.5] differ.
  """
  c = confusion_counts(np.asarray(prob) > threshold, gt)
  return f1_from_counts(c[..., 0], c[..., 1], c[..., 2])


def pixel_iou(prob, gt, threshold: float = 0.5) -> np.ndarray:
  """Per-image IoU of `prob > threshold` against `gt`; [..., H, W] -> [...]; 1 when both are empty."""
  c = confusion_counts(np.asarray(prob) > threshold, gt)
  return iou_from_counts(c[..., 0], c[..., 1], c[..., 2])


def score_histograms(prob, gt, bins: int = DEFAULT_BINS):
  """Histograms of pixel scores, [..., H, W] -> (pos [..., bins], neg [..., bins]) int64.

  Bin b holds scores in [b / bins, (b + 1) / bins) (the last bin includes 1.0)."""
  prob = np.asarray(prob, np.float64)
  gt = np.asarray(gt).astype(bool)
  lead = prob.shape[:-2]
  m = int(np.prod(lead)) if lead else 1
  idx = np.clip(np.floor(prob * bins), 0, bins - 1).astype(np.int64).reshape(m, -1)
  idx = idx + (np.arange(m, dtype=np.int64) * bins)[:, None]
  g = gt.reshape(m, -1)
  pos = np.bincount(idx[g], minlength=m * bins).reshape(lead + (bins,))
  neg = np.bincount(idx[~g], minlength=m * bins).reshape(lead + (bins,))
  return pos, neg


def curve_counts(pos, neg):
  """(TP, FP, FN) [..., bins + 1] at thresholds k / bins, k = 0..bins (positive iff bin >= k)."""
  pos = np.asarray(pos, np.int64)
  neg = np.asarray(neg, np.int64)
  zeros = np.zeros(pos.shape[:-1] + (1,), np.int64)
  tp = np.concatenate([np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1], zeros], axis=-1)
  fp = np.concatenate([np.cumsum(neg[..., ::-1], axis=-1)[..., ::-1], zeros], axis=-1)
  fn = pos.sum(axis=-1, keepdims=True) - tp
  return tp, fp, fn


def f1_curve(pos, neg) -> np.ndarray:
  """F1 [..., bins + 1] at thresholds k / bins from score histograms (0 where mask and prediction are empty)."""
  tp, fp, fn = curve_counts(pos, neg)
  return f1_from_counts(tp, fp, fn)


def auc_from_histograms(pos, neg) -> np.ndarray:
  """ROC AUC [...] from score histograms; ties within a bin count 1/2; NaN where a class is absent.

  Exactly scikit-learn's `roc_auc_score` on scores quantised to the bins, within ~1/bins of it on raw scores.
  """
  pos = np.asarray(pos, np.float64)
  neg = np.asarray(neg, np.float64)
  p = pos.sum(-1)
  n = neg.sum(-1)
  above = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1] - pos  # positives strictly above each bin
  wins = np.sum(neg * (above + 0.5 * pos), axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where((p > 0) & (n > 0), wins / np.maximum(p * n, 1), np.nan)


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`, ties get their average rank."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  new = np.concatenate([[True], xs[1:] != xs[:-1]])
  group = np.cumsum(new) - 1
  starts = np.flatnonzero(new)
  ends = np.concatenate([starts[1:], [len(xs)]])
  avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(len(x))
  ranks[order] = avg[group]
  return ranks


def roc_auc(scores, labels) -> float:
  """Exact ROC AUC (Mann-Whitney, ties 1/2) of `scores` [N] for binary `labels` [N]; NaN if one class."""
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).astype(bool).ravel()
  p, n = int(labels.sum()), int((~labels).sum())
  if p == 0 or n == 0:
    return float("nan")
  r = _average_ranks(scores)
  return float((r[labels].sum() - p * (p + 1) / 2.0) / (p * n))


def balanced_accuracy(pred_labels, labels) -> float:
  """Mean recall over the classes present in `labels` (scikit-learn's `balanced_accuracy_score`)."""
  pred = np.asarray(pred_labels).astype(bool).ravel()
  lab = np.asarray(labels).astype(bool).ravel()
  recalls = [np.mean(pred[lab == c] == c) for c in (False, True) if np.any(lab == c)]
  return float(np.mean(recalls)) if recalls else float("nan")


# ------------------------------------------------------------------------------------------ evaluator
def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else float("nan")


class Evaluator:
  """Accumulates per-image metrics; `summary()` gives the aggregates over forged images and all images.

  `add(prob, gt)` with `prob` [H, W] float in [0, 1] (resized to `gt`'s size [H, W] first if it differs,
  bilinear as the reference) or a batch [N, H, W] of one size. Per-image values are kept (a few numbers
  each); pixel histograms and F1 curves are kept only as running sums, so memory is O(bins).
  """

  def __init__(self, threshold: float = 0.5, bins: int = DEFAULT_BINS):
    self.threshold = float(threshold)
    self.bins = int(bins)
    self.rows: list[dict] = []
    z = lambda: np.zeros(bins, np.int64)  # noqa: E731
    self._hist = {"all": [z(), z()], "forged": [z(), z()]}
    self._curve = {"all": np.zeros(bins + 1), "forged": np.zeros(bins + 1)}

  def __len__(self) -> int:
    return len(self.rows)

  def add(self, prob, gt, name: str | Iterable[str] = "") -> list[dict]:
    """Add one image ([H, W]) or a batch ([N, H, W]); returns the per-image rows added."""
    gt = np.asarray(gt)
    prob = np.asarray(prob, np.float32)
    if gt.ndim == 2:
      prob = resize_prob(prob, gt.shape)[None]
      gt = gt[None]
      names = [name] if isinstance(name, str) else list(name)
    else:
      if prob.shape[-2:] != gt.shape[-2:]:
        prob = np.stack([resize_prob(p, gt.shape[-2:]) for p in prob])
      names = [name] * len(gt) if isinstance(name, str) else list(name)
    gt = gt > 0
    counts = confusion_counts(prob > self.threshold, gt)
    f1 = f1_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
    iou = iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
    pos, neg = score_histograms(prob, gt, self.bins)
    curves = f1_curve(pos, neg)
    best = curves.max(-1)
    auc = auc_from_histograms(pos, neg)
    score = prob.reshape(len(prob), -1).max(-1)
    forged = gt.reshape(len(gt), -1).any(-1)
    new = []
    for i in range(len(gt)):
      row = dict(
        name=names[i],
        forged=bool(forged[i]),
        height=int(gt.shape[1]),
        width=int(gt.shape[2]),
        f1=float(f1[i]),
        iou=float(iou[i]),
        f1_best=float(best[i]),
        auc=float(auc[i]),
        score=float(score[i]),
        tp=int(counts[i, 0]),
        fp=int(counts[i, 1]),
        fn=int(counts[i, 2]),
        tn=int(counts[i, 3]),
      )
      new.append(row)
      subsets = ("all", "forged") if forged[i] else ("all",)
      for s in subsets:
        self._hist[s][0] += pos[i]
        self._hist[s][1] += neg[i]
        self._curve[s] += curves[i]
    self.rows.extend(new)
    return new

  def _subset(self, key: str) -> dict:
    rows = [r for r in self.rows if r["forged"]] if key == "forged" else self.rows
    n = len(rows)
    out = dict(n_images=n)
    if n == 0:
      nan = float("nan")
      out.update(
        f1=nan,
        iou=nan,
        f1_best_image=nan,
        f1_best_dataset=nan,
        threshold_best_dataset=nan,
        f1_pooled=nan,
        auc_pooled=nan,
        auc_image_mean=nan,
        n_auc_images=0,
        tp=0,
        fp=0,
        fn=0,
        tn=0,
      )
      return out
    col = lambda k: np.array([r[k] for r in rows], np.float64)  # noqa: E731
    tp, fp, fn, tn = (int(col(k).sum()) for k in ("tp", "fp", "fn", "tn"))
    mean_curve = self._curve[key] / n
    k = int(np.argmax(mean_curve))
    aucs = col("auc")
    out.update(
      f1=float(col("f1").mean()),
      iou=float(col("iou").mean()),
      f1_best_image=float(col("f1_best").mean()),
      f1_best_dataset=float(mean_curve[k]),
      threshold_best_dataset=k / self.bins,
      f1_pooled=float(f1_from_counts(tp, fp, fn)),
      auc_pooled=float(auc_from_histograms(*self._hist[key])),
      auc_image_mean=_nanmean(aucs),
      n_auc_images=int(np.sum(~np.isnan(aucs))),
      tp=tp,
      fp=fp,
      fn=fn,
      tn=tn,
    )
    return out

  def image_level(self) -> dict:
    """Detection metrics with score = max of the map: AUC, balanced accuracy and counts at the threshold."""
    labels = np.array([r["forged"] for r in self.rows], bool)
    scores = np.array([r["score"] for r in self.rows], np.float64)
    pred = scores > self.threshold
    return dict(
      n_images=len(labels),
      n_forged=int(labels.sum()),
      n_authentic=int((~labels).sum()),
      auc=roc_auc(scores, labels) if len(labels) else float("nan"),
      balanced_accuracy=balanced_accuracy(pred, labels) if len(labels) else float("nan"),
      tp=int(np.sum(pred & labels)),
      fp=int(np.sum(pred & ~labels)),
      fn=int(np.sum(~pred & labels)),
      tn=int(np.sum(~pred & ~labels)),
      threshold=self.threshold,
    )

  def summary(self) -> dict:
    """Aggregates:

    - `forged` / `all`: over forged images only / over every image, each with
      `f1`, `iou` (mean over images of per-image F1 / IoU at `threshold`; **`forged['f1']` is the paper's
      headline**), `f1_best_image` (mean over images of each image's best-threshold F1), `f1_best_dataset`
      and `threshold_best_dataset` (one threshold for the whole subset, maximising the mean per-image F1),
      `f1_pooled` (F1 of the pixel counts summed over the subset), `auc_pooled` (pixel AUC over all pixels of
      the subset), `auc_image_mean` (mean per-image pixel AUC over the `n_auc_images` images that have both
      classes), and the summed pixel counts `tp fp fn tn`.
    - `image`: image-level detection from score = max of the map (see `image_level`).
    """
    return dict(
      threshold=self.threshold,
      bins=self.bins,
      forged=self._subset("forged"),
      all=self._subset("all"),
      image=self.image_level(),
    )


def is_nan(x) -> bool:
  return isinstance(x, float) and math.isnan(x)
