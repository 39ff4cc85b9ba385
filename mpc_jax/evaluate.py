"""`mpc-jax eval`: one checkpoint on several test sets, the reference's protocol, robustness sweeps.

Each `--data` SPEC (any data spec; `NAME=SPEC` names its row) or each set of a `--suite` (`mpc_jax.suites`)
is run as `mpc-jax predict` runs images (the same `--mode`, `--size`, ... flags and defaults; by default
resized to the model's training size, the reference's `stage2/test.py`) and scored per image against its
mask at the mask's size (`mpc_jax.metrics`). The paper's numbers are the `F1` / `IoU` columns over
**forged** images (its test lists hold only manipulated images); the `all` columns add authentic images,
where F1 is 0 by convention. `--perturb` repeats each set under `mpc_jax.perturb`'s perturbations;
`write_report` lists what is written to `--out`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import sys
import time
from typing import Sequence

import cv2
import numpy as np

from mpc_jax import perturb as perturb_lib
from mpc_jax.metrics import DEFAULT_BINS, Evaluator
from mpc_jax.predict import (
  PredictConfig,
  add_model_args,
  add_predict_args,
  as_predictor,
  check_model_use,
  config_from_args,
  load_model_from_args,
  predict_stream,
  prefetch,
  resolve_config,
)


def dataset_name(spec: str) -> tuple[str, str]:
  """`NAME=SPEC` -> (NAME, SPEC); else a name from the spec (folder / file stem, tfds name)."""
  if "=" in spec and not os.path.exists(spec):
    name, rest = spec.split("=", 1)
    if name and re.fullmatch(r"[\w.\-+]+", name):
      return name, rest
  s = spec.rstrip("/\\")
  if s.startswith(("tfds:", "synthetic:")):
    return s.replace(":", "_"), spec
  if s.startswith("arrayrecord:"):
    from mpc_jax.data.arrayrecord import parse_spec

    directory, packed = parse_spec(s[len("arrayrecord:") :])
    return re.sub(r"[^\w.\-+]", "_", packed or os.path.basename(directory.rstrip("/\\"))) or "data", spec
  if s.startswith("layout:"):
    parts = s.split(":", 2)
    return re.sub(r"[^\w.\-+]", "_", os.path.basename(parts[-1].rstrip("/\\")) or parts[1]) or "data", spec
  if ":" in s and not os.path.exists(s):
    s = s.split(":", 1)[0].rstrip("/\\")
  base = os.path.basename(s)
  if base in ("images", "imgs", "Tp") and os.path.dirname(s):
    base = os.path.basename(os.path.dirname(s))
  return os.path.splitext(base)[0] or "data", spec


def _run_label(perturbation: str, strength) -> str:
  return "clean" if perturbation == "none" else f"{perturbation}_{strength}"


def evaluate_source(
  model,
  source,
  *,
  name: str = "data",
  cfg: PredictConfig | None = None,
  perturbation: str = "none",
  strength=0,
  threshold: float | None = None,
  bins: int = DEFAULT_BINS,
  limit: int | None = None,
  seed: int = 0,
  masks_dir: str | None = None,
  progress: bool = True,
) -> dict:
  """Evaluate `model` (an MPC module, a `Predictor` or a logits callable) on a source.

  `source`: anything with `len()` and `[i] -> {'image': uint8 [H, W, 3], 'mask': uint8 [H, W], 'path'}`
  (a `None` record is skipped as bad). The perturbation is applied to the image before prediction.
  Returns dict(dataset, perturbation, strength, summary=Evaluator.summary(), per_image=[rows],
  n_failed, failures=[(path, reason)], seconds, images_per_s)."""
  cfg = resolve_config(cfg, model)
  threshold = cfg.threshold if threshold is None else threshold
  ev = Evaluator(threshold=threshold, bins=bins)
  n = len(source) if limit is None else min(limit, len(source))
  failures: list[tuple[str, str]] = []
  pred = as_predictor(model, cfg.batch_size, cfg.for_images(n).programs)

  def items():
    for i in range(n):
      rec = source[i]  # a bad file raises here under on_bad_example='raise'
      if rec is None:  # skipped bad example (on_bad_example='skip')
        continue
      img = perturb_lib.apply(rec["image"], perturbation, strength, seed=seed + i)
      yield (i, rec["path"], rec["mask"]), img, rec["mask"].shape

  t0 = time.time()
  it = predict_stream(pred, prefetch(items(), 2 * cfg.batch_size), cfg)
  if progress:
    from tqdm import tqdm

    label = name if perturbation == "none" else f"{name} [{perturbation} {strength}]"
    it = tqdm(it, total=n, desc=label, unit="img", file=sys.stderr, leave=False)
  for (_, path, mask), prob in it:
    if isinstance(prob, Exception):  # e.g. an image too small for the model
      failures.append((str(path), str(prob)))
      continue
    [row] = ev.add(prob, mask, name=path)
    if masks_dir is not None:
      stem = os.path.splitext(os.path.basename(path))[0]
      os.makedirs(masks_dir, exist_ok=True)
      cv2.imwrite(os.path.join(masks_dir, stem + ".png"), (prob > threshold).astype(np.uint8) * 255)
  seconds = time.time() - t0
  bad = list(getattr(source, "bad_examples", []) or [])
  return dict(
    dataset=name,
    perturbation=perturbation,
    strength=strength,
    summary=ev.summary(),
    per_image=ev.rows,
    n_failed=len(failures) + len(bad),
    failures=failures + [tuple(b) for b in bad],
    seconds=seconds,
    images_per_s=len(ev) / seconds if seconds > 0 else float("nan"),
  )


def evaluate(
  model,
  specs: Sequence[str],
  *,
  cfg: PredictConfig | None = None,
  perturbations=(),
  bins: int = DEFAULT_BINS,
  limit: int | None = None,
  seed: int = 0,
  skip_bad: bool = False,
  out_dir: str | None = None,
  save_masks: bool = False,
  progress: bool = True,
) -> list[dict]:
  """Evaluate on every spec: the clean run, then each `(kind, strengths)` of `perturbations`.

  Returns the list of `evaluate_source` results (dataset load errors give a result with `error`)."""
  from mpc_jax.data.sources import source_from_spec, unique_names

  cfg = resolve_config(cfg, model)
  pred = as_predictor(model, cfg.batch_size, cfg.programs)
  results = []
  pairs = [dataset_name(spec) for spec in specs]
  for name, (_, spec_) in zip(unique_names([n for n, _ in pairs]), pairs):
    try:
      source = source_from_spec(spec_, on_bad_example="skip" if skip_bad else "raise")
    except Exception as e:  # noqa: BLE001 - reported, the other datasets still run
      print(f"mpc-jax eval: cannot load {name} ({spec_}): {e}", file=sys.stderr)
      results.append(dict(dataset=name, perturbation="none", strength=0, error=str(e)))
      continue
    runs = [("none", 0)] + [(kind, s) for kind, strengths in perturbations for s in strengths]
    for kind, strength in runs:
      masks_dir = None
      if out_dir is not None and save_masks:
        masks_dir = os.path.join(out_dir, "masks", name, _run_label(kind, strength))
      try:
        res = evaluate_source(
          pred,
          source,
          name=name,
          cfg=cfg,
          perturbation=kind,
          strength=strength,
          bins=bins,
          limit=limit,
          seed=seed,
          masks_dir=masks_dir,
          progress=progress,
        )
      except Exception as e:  # noqa: BLE001
        print(f"mpc-jax eval: {name} [{_run_label(kind, strength)}] failed: {e}", file=sys.stderr)
        results.append(dict(dataset=name, perturbation=kind, strength=strength, error=str(e)))
        break
      res["spec"] = spec_
      results.append(res)
      if progress:
        s = res["summary"]
        print(
          f"{name} [{_run_label(kind, strength)}]: n={s['all']['n_images']} "
          f"F1(forged)={s['forged']['f1']:.4f} IoU(forged)={s['forged']['iou']:.4f} "
          f"F1(all)={s['all']['f1']:.4f} ({res['images_per_s']:.2f} img/s)",
          file=sys.stderr,
        )
  return results


# ------------------------------------------------------------------------------------------- reports
COLUMNS = [  # (csv key, markdown header, getter)
  ("dataset", "dataset", lambda r: r["dataset"]),
  ("perturbation", "perturb", lambda r: r["perturbation"]),
  ("strength", "strength", lambda r: r["strength"]),
  ("n_images", "n", lambda r: r["summary"]["all"]["n_images"]),
  ("n_forged", "forged", lambda r: r["summary"]["forged"]["n_images"]),
  ("n_failed", "failed", lambda r: r["n_failed"]),
  ("f1_forged", "F1", lambda r: r["summary"]["forged"]["f1"]),
  ("iou_forged", "IoU", lambda r: r["summary"]["forged"]["iou"]),
  ("f1_all", "F1 (all)", lambda r: r["summary"]["all"]["f1"]),
  ("iou_all", "IoU (all)", lambda r: r["summary"]["all"]["iou"]),
  ("f1_best_image_forged", "F1 best/img", lambda r: r["summary"]["forged"]["f1_best_image"]),
  ("f1_best_dataset_forged", "F1 best/set", lambda r: r["summary"]["forged"]["f1_best_dataset"]),
  (
    "threshold_best_dataset_forged",
    "thr best/set",
    lambda r: r["summary"]["forged"]["threshold_best_dataset"],
  ),
  ("f1_pooled_forged", "F1 pooled", lambda r: r["summary"]["forged"]["f1_pooled"]),
  ("pixel_auc_forged", "pixel AUC", lambda r: r["summary"]["forged"]["auc_pooled"]),
  ("pixel_auc_all", "pixel AUC (all)", lambda r: r["summary"]["all"]["auc_pooled"]),
  ("image_auc", "image AUC", lambda r: r["summary"]["image"]["auc"]),
  ("image_balanced_acc", "image bACC", lambda r: r["summary"]["image"]["balanced_accuracy"]),
]
EXTRA_CSV = [  # counts behind the numbers, CSV/JSON only
  ("tp_forged", lambda r: r["summary"]["forged"]["tp"]),
  ("fp_forged", lambda r: r["summary"]["forged"]["fp"]),
  ("fn_forged", lambda r: r["summary"]["forged"]["fn"]),
  ("tn_forged", lambda r: r["summary"]["forged"]["tn"]),
  ("tp_all", lambda r: r["summary"]["all"]["tp"]),
  ("fp_all", lambda r: r["summary"]["all"]["fp"]),
  ("fn_all", lambda r: r["summary"]["all"]["fn"]),
  ("tn_all", lambda r: r["summary"]["all"]["tn"]),
  ("pixel_auc_image_mean_forged", lambda r: r["summary"]["forged"]["auc_image_mean"]),
  ("n_auc_images_forged", lambda r: r["summary"]["forged"]["n_auc_images"]),
  ("image_tp", lambda r: r["summary"]["image"]["tp"]),
  ("image_fp", lambda r: r["summary"]["image"]["fp"]),
  ("image_fn", lambda r: r["summary"]["image"]["fn"]),
  ("image_tn", lambda r: r["summary"]["image"]["tn"]),
  ("images_per_s", lambda r: r["images_per_s"]),
]


def _fmt(v) -> str:
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.4f}"
  return str(v)


def _json_safe(obj):
  if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
    return None
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (np.floating, np.integer)):
    return _json_safe(obj.item())
  return obj


def markdown_table(results: Sequence[dict]) -> str:
  ok = [r for r in results if "error" not in r]
  lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in ok:
    lines.append("| " + " | ".join(_fmt(get(r)) for _, _, get in COLUMNS) + " |")
  for r in results:
    if "error" in r:
      lines.append(f"| {r['dataset']} | {r['perturbation']} | {r['strength']} | ERROR: {r['error']} |")
  return "\n".join(lines)


def write_report(results: Sequence[dict], out_dir: str, meta: dict | None = None) -> dict[str, str]:
  """Writes the report under `out_dir`; returns the files' paths.

  `results.md`, `results.csv`, `results.json` (one row per dataset x perturbation x strength),
  `per_image/<dataset>__<run>.csv` and, for datasets run with perturbations, `robustness_<dataset>.png`
  (F1 and AUC against strength). `evaluate(..., save_masks=True)` also writes
  `masks/<dataset>/<run>/<stem>.png` (0/255, at the mask's size).
  """
  os.makedirs(out_dir, exist_ok=True)
  meta = dict(meta or {})
  paths = {k: os.path.join(out_dir, f"results.{k}") for k in ("md", "csv", "json")}
  notes = (
    "F1 / IoU: mean over images of per-image pixel F1 / IoU at the threshold, over forged images "
    "(the paper's table); '(all)' includes authentic images (F1 = 0 there; IoU = 1 iff nothing is "
    "predicted). 'best/img': each image at its best threshold; 'best/set': one threshold per set. "
    "pixel AUC pooled over the pixels of forged images; image AUC / bACC: score = max of the map."
  )
  with open(paths["md"], "w") as f:
    f.write("# mpc-jax eval\n\n")
    for k, v in meta.items():
      f.write(f"- {k}: `{v}`\n")
    f.write("\n" + markdown_table(results) + "\n\n" + notes + "\n")
    fails = [(r["dataset"], p, why) for r in results if "error" not in r for p, why in r["failures"]]
    if fails:
      f.write(
        "\n## Failed examples\n\n"
        + "\n".join(
          f"- {d}: {why}" if str(p) in str(why) else f"- {d}: {p}: {why}" for d, p, why in fails[:200]
        )
        + "\n"
      )
  with open(paths["csv"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([k for k, _, _ in COLUMNS] + [k for k, _ in EXTRA_CSV] + ["error"])
    for r in results:
      if "error" in r:
        w.writerow(
          [r["dataset"], r["perturbation"], r["strength"]]
          + [""] * (len(COLUMNS) + len(EXTRA_CSV) - 3)
          + [r["error"]]
        )
      else:
        w.writerow([get(r) for _, _, get in COLUMNS] + [get(r) for _, get in EXTRA_CSV] + [""])
  with open(paths["json"], "w") as f:
    payload = dict(
      meta=meta, notes=notes, results=[{k: v for k, v in r.items() if k != "per_image"} for r in results]
    )
    json.dump(_json_safe(payload), f, indent=1)
  pdir = os.path.join(out_dir, "per_image")
  for r in results:
    if "error" in r or not r["per_image"]:
      continue
    os.makedirs(pdir, exist_ok=True)
    p = os.path.join(pdir, f"{r['dataset']}__{_run_label(r['perturbation'], r['strength'])}.csv")
    with open(p, "w", newline="") as f:
      keys = list(r["per_image"][0].keys())
      w = csv.DictWriter(f, fieldnames=keys)
      w.writeheader()
      w.writerows(r["per_image"])
  paths.update(plot_robustness(results, out_dir))
  return paths


def plot_robustness(results: Sequence[dict], out_dir: str) -> dict[str, str]:
  """One PNG per dataset with perturbations: F1 (forged) and pixel AUC against strength per kind."""
  ok = [r for r in results if "error" not in r]
  written = {}
  for ds in dict.fromkeys(r["dataset"] for r in ok):
    rows = [r for r in ok if r["dataset"] == ds]
    kinds = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != "none"))
    if not kinds:
      continue
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next((r for r in rows if r["perturbation"] == "none"), None)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
      kr = sorted((r for r in rows if r["perturbation"] == kind), key=lambda r: float(r["strength"]))
      xs = [float(r["strength"]) for r in kr]
      for key, label, color in (("f1", "F1", "C0"), ("auc_pooled", "pixel AUC", "C1")):
        ys = [r["summary"]["forged"][key] for r in kr]
        ax.plot(xs, ys, "o-", color=color, label=label)
        if clean is not None:
          ax.axhline(clean["summary"]["forged"][key], color=color, ls="--", lw=0.8)
      if kind in ("jpeg", "resize"):
        ax.invert_xaxis()  # stronger to the right
      ax.set_xlabel(perturb_lib.LABELS.get(kind, kind))
      ax.set_ylim(0, 1)
      ax.grid(alpha=0.3)
      ax.set_title(f"{ds}: {kind}")
    axes[0][0].set_ylabel("forged images (dashed: clean)")
    axes[0][0].legend(loc="lower left")
    fig.tight_layout()
    path = os.path.join(out_dir, f"robustness_{ds}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written[f"plot_{ds}"] = path
  return written


# ----------------------------------------------------------------------------------------------- CLI
def cli_main(argv: Sequence[str] | None = None) -> int:
  """`mpc-jax eval`: exit 0 on success, 1 when a dataset or run failed, 2 on usage errors."""
  from mpc_jax.main import add_common_args

  p = argparse.ArgumentParser(prog="mpc-jax eval", description=__doc__.split("\n\n")[0])
  add_model_args(p)
  p.add_argument(
    "--data",
    nargs="+",
    action="extend",
    default=[],
    metavar="SPEC",
    help="test sets: folder (images/ + masks/), list .txt/.csv/.npy/.json, tfds:NAME[:SPLIT], "
    "arrayrecord:DIR, layout:NAME:ROOT; NAME=SPEC to name one",
  )
  p.add_argument(
    "--suite",
    metavar="NAME|FILE.py[:NAME]",
    help="evaluate a suite of test sets ('paper': the paper's ten), one table (see mpc_jax/suites.py)",
  )
  p.add_argument(
    "--data-root", default=None, help="where --suite looks for its sets (default $MPC_JAX_DATA, else ./data)"
  )
  p.add_argument("--out", default=None, help="output folder (default eval_<timestamp>)")
  add_predict_args(p, PredictConfig(), "--protocol")
  p.add_argument(
    "--bins", type=int, default=DEFAULT_BINS, help="score histogram bins (best-threshold F1, AUC)"
  )
  p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of each set")
  p.add_argument(
    "--skip-bad", action="store_true", help="skip unreadable examples (counted) instead of stopping"
  )
  p.add_argument("--save-masks", action="store_true", help="write the predicted binary masks")
  p.add_argument(
    "--perturb",
    action="append",
    default=None,
    metavar="SPEC",
    help="robustness sweep: all | jpeg,resize,blur,noise,noise_sigma | 'jpeg:100,70;blur:3,7'",
  )
  p.add_argument("--seed", type=int, default=0, help="seed of the noise perturbation")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  add_common_args(p)
  args = p.parse_args(argv)
  if not args.data and not args.suite:
    p.error("give --data SPEC [SPEC ...] or --suite NAME")
  suite = None
  try:
    cfg = config_from_args(args)
    perturbations = perturb_lib.parse_spec(args.perturb)
    if args.suite:
      from mpc_jax import suites

      suite = suites.load_suite(args.suite)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  missing = []
  if suite is not None:
    root = args.data_root or os.environ.get("MPC_JAX_DATA") or "data"
    found, missing = suites.resolve_suite(suite[1], root)
    for name, why in missing:
      print(f"{p.prog}: suite {suite[0]}: {name} not found ({why})", file=sys.stderr)
    args.data = list(args.data) + [f"{name}={spec}" for name, spec in found]
    if not args.data:
      print(f"{p.prog}: suite {suite[0]}: no set found under {root}", file=sys.stderr)
  out = args.out or datetime.datetime.now().strftime("eval_%Y%m%d_%H%M%S")
  model = load_model_from_args(args)
  check_model_use(model, cfg, p.prog)
  cfg = resolve_config(cfg, model)
  if cfg.mode == "resize":
    print(f"{p.prog}: protocol resize to {cfg.size}x{cfg.size} px", file=sys.stderr)
  results = evaluate(
    model,
    args.data,
    cfg=cfg,
    perturbations=perturbations,
    bins=args.bins,
    limit=args.limit,
    seed=args.seed,
    skip_bad=args.skip_bad,
    out_dir=out,
    save_masks=args.save_masks,
    progress=not args.no_progress,
  )
  meta = dict(
    checkpoint=args.checkpoint or f"random-init:{args.random_init}",
    protocol=cfg.mode,
    size=cfg.size if cfg.mode == "resize" else None,
    tile=cfg.tile if cfg.mode == "native" else None,
    threshold=cfg.threshold,
    bins=args.bins,
    limit=args.limit,
    date=datetime.datetime.now().isoformat(timespec="seconds"),
  )
  paths = write_report(results, out, meta)
  if suite is not None:
    rows = suites.suite_rows(results, suite[1])
    paths.update({f"suite_{k}": v for k, v in suites.write_suite(suite[0], rows, missing, out, meta).items()})
    print(suites.suite_markdown(suite[0], rows, missing))
  else:
    print(markdown_table(results))
  print(f"\nwrote {', '.join(sorted(paths.values()))}", file=sys.stderr)
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(cli_main())
