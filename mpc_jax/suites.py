"""Evaluation suites: named lists of test sets, found under a data root, evaluated into one table.

    mpc-jax eval --checkpoint DIR --suite paper [--data-root DATA] [--out DIR]
    mpc-jax eval --checkpoint DIR --suite my_suites.py:mine          # your own list

One command reproduces a paper table from whichever sets a machine holds: each entry (a dict; its fields
are listed in `resolve_suite`) names a set and where it may be found, and sets not found are named in a
footnote, not an error. A user file defines `SUITES = {name: [...]}` (or `get_suite(name)`); see
`configs/suites.py`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
from typing import Sequence

__all__ = ["PAPER", "SUITES", "load_suite", "resolve_suite", "suite_rows", "suite_markdown", "write_suite"]

# The paper's ten test sets (Table: pixel-level F1 / IoU, threshold 0.5, manipulated images only).
PAPER = [
  {
    "name": "Columbia",
    "layout": "columbia",
    "dirs": ("Columbia", "Columbia_uncompressed", "4cam_splc"),
    "tfds": "columbia:test",
    "n": 160,
  },
  {
    "name": "DSO-1",
    "layout": "dso1",
    "dirs": ("DSO-1", "DSO", "tifs-database"),
    "tfds": "dso1:test",
    "n": 100,
  },
  {
    "name": "CASIAv1",
    "layout": "casia_v1",
    "dirs": ("CASIAv1", "CASIA1", "CASIA 1.0", "CASIA 1.0 dataset"),
    "tfds": "casia_v1:test",
    "n": 920,
  },
  {
    "name": "NIST16",
    "layout": "nist16",
    "dirs": ("NIST16", "NIST2016", "NC2016_Test0613", "NIST"),
    "tfds": "nist16:test",
    "n": 564,
  },
  {
    "name": "Coverage",
    "layout": "coverage",
    "dirs": ("Coverage", "COVERAGE"),
    "tfds": "coverage:test",
    "n": 100,
  },
  {
    "name": "Korus",
    "layout": "korus",
    "dirs": ("Korus", "realistic-tampering-dataset", "realistic-tampering", "RealisticTampering"),
    "tfds": "korus:test",
    "n": 220,
  },
  {
    "name": "In-the-Wild",
    "layout": "in_the_wild",
    "dirs": ("In-the-Wild", "Wild", "label_in_wild"),
    "tfds": "in_the_wild:test",
    "n": 201,
  },
  {
    "name": "CoCoGlide",
    "layout": "cocoglide",
    "dirs": ("CoCoGlide", "Glide"),
    "tfds": "cocoglide:test",
    "n": 512,
  },
  {"name": "MISD", "layout": "misd", "dirs": ("MISD",), "tfds": "misd:test", "n": 227},
  # FF++ needs frames extracted from its videos (see mpc_jax.data.layouts): an images/ + masks/ folder.
  {"name": "FF++", "dirs": ("FF++", "FFpp", "FaceForensics++", "FaceForensics"), "n": None},
]
SUITES = {"paper": PAPER}


def load_suite(ref: str) -> tuple[str, list[dict]]:
  """`NAME` (built in) or `FILE.py[:NAME]` -> (name, entries). ValueError / FileNotFoundError on bad input."""
  if ref in SUITES:
    return ref, [dict(e) for e in SUITES[ref]]
  path, _, name = ref.partition(":") if not os.path.isfile(ref) else (ref, "", "")
  if not path.endswith(".py"):
    raise ValueError(f"unknown suite {ref!r}: built in are {', '.join(SUITES)}; or give FILE.py[:NAME]")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"suite file not found: {path}")
  spec = importlib.util.spec_from_file_location("_mpc_jax_user_suites", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  suites = getattr(mod, "SUITES", None)
  if hasattr(mod, "get_suite"):
    entries = mod.get_suite(name) if name else mod.get_suite()
    name = name or os.path.splitext(os.path.basename(path))[0]
  elif isinstance(suites, dict) and suites:
    name = name or next(iter(suites))
    if name not in suites:
      raise ValueError(f"{path}: no suite {name!r} in SUITES (it has: {', '.join(suites)})")
    entries = suites[name]
  else:
    raise ValueError(f"{path}: define SUITES = {{name: [entries]}} or get_suite(name)")
  entries = [dict(e) for e in entries]
  for i, e in enumerate(entries):
    if not isinstance(e.get("name"), str) or not e["name"]:
      raise ValueError(f"{path}: suite {name!r} entry {i} needs a 'name'")
    if not (e.get("spec") or e.get("dirs") or e.get("tfds")):
      raise ValueError(f"{path}: suite {name!r} entry {e['name']!r} needs 'spec', 'dirs' or 'tfds'")
  return name, entries


def _tfds_available(ref: str) -> bool:
  data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  return os.path.isdir(os.path.join(data_dir, ref.split(":")[0]))


def _norm(name: str) -> str:
  return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_alias(root: str, name: str) -> str | None:
  """`root/name` (case-insensitive), else a sub-folder whose name equals it ignoring case and punctuation."""
  from mpc_jax.data.layouts import find_dir

  if not os.path.isdir(root):
    return None
  path = find_dir(root, name)
  if path is None and "/" not in name:
    path = next(
      (
        os.path.join(root, f)
        for f in sorted(os.listdir(root))
        if _norm(f) == _norm(name) and os.path.isdir(os.path.join(root, f))
      ),
      None,
    )
  return path


def resolve_suite(entries: Sequence[dict], root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """(found [(name, spec)], missing [(name, why)]) for the entries under data root `root`.

  Entry fields:
    name    row name in the table ('DSO-1')
    spec    optional: an explicit spec; `{root}` is replaced by the data root
    dirs    folder names tried under the data root, in order (case and punctuation ignored; 'a/b' nested)
    layout  optional: the public release's layout (`mpc_jax.data.layouts`) used for a found folder; without
            it a found folder must hold images/ + masks/ (or be an `mpc-jax prepare` folder)
    tfds    optional: 'NAME[:SPLIT]' used when no folder is found and the TFDS dataset is built
    n       optional: the number of images in the paper's list (shown in the table)
  A folder holding `manifest.json` is read as `arrayrecord:`.
  """
  from mpc_jax.data.layouts import layout_pairs
  from mpc_jax.data.sources import source_from_spec

  found, missing = [], []
  root = os.path.expanduser(root)
  for e in entries:
    name, looked = e["name"], []
    spec = None
    if e.get("spec"):
      cand = str(e["spec"]).replace("{root}", root)
      looked.append(cand)
      try:
        source_from_spec(cand, on_bad_example="skip", check_files="none")
        spec = cand
      except FileNotFoundError as err:
        looked[-1] += f" ({err})"
    for d in e.get("dirs", ()) if spec is None else ():
      path = _find_alias(root, d)
      looked.append(os.path.join(root, d))
      if path is None:
        continue
      if os.path.isfile(os.path.join(path, "manifest.json")):
        spec = f"arrayrecord:{path}"
      elif e.get("layout"):
        try:
          layout_pairs(e["layout"], path)
        except FileNotFoundError as err:
          looked[-1] += f" (found, but {err})"
          continue
        spec = f"layout:{e['layout']}:{path}"
      elif os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "masks")):
        spec = path
      else:
        looked[-1] += " (found, but no images/ + masks/)"
        continue
      break
    if spec is None and e.get("tfds"):
      looked.append(f"tfds:{e['tfds']}")
      if _tfds_available(e["tfds"]):
        spec = f"tfds:{e['tfds']}"
    if spec is None:
      missing.append((name, "looked for " + ", ".join(looked)))
    else:
      found.append((name, spec))
  return found, missing


def suite_rows(results: Sequence[dict], entries: Sequence[dict]) -> list[dict]:
  """One row per evaluated set (clean run): dataset, n (paper), n_images, f1, iou (forged images)."""
  paper_n = {e["name"]: e.get("n") for e in entries}
  rows = []
  for r in results:
    if r.get("perturbation", "none") != "none":
      continue
    if "error" in r:
      rows.append(
        {
          "dataset": r["dataset"],
          "spec": r.get("spec", ""),
          "n_paper": paper_n.get(r["dataset"]),
          "error": r["error"],
        }
      )
      continue
    s = r["summary"]
    rows.append(
      {
        "dataset": r["dataset"],
        "spec": r.get("spec", ""),
        "n_paper": paper_n.get(r["dataset"]),
        "n_images": s["all"]["n_images"],
        "n_forged": s["forged"]["n_images"],
        "n_failed": r["n_failed"],
        "f1": s["forged"]["f1"],
        "iou": s["forged"]["iou"],
      }
    )
  return rows


def _mean(rows, key):
  vals = [r[key] for r in rows if "error" not in r and r.get(key) is not None and not math.isnan(r[key])]
  return sum(vals) / len(vals) if vals else float("nan")


def _f(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def suite_markdown(name: str, rows: Sequence[dict], missing: Sequence[tuple[str, str]]) -> str:
  """The paper-style table: sets as columns, F1 / IoU rows, the mean over the evaluated sets."""
  ok = [r for r in rows if "error" not in r]
  cols = [r["dataset"] + ("*" if r["n_paper"] and r["n_forged"] != r["n_paper"] else "") for r in ok]
  lines = [
    f"## suite {name}",
    "",
    "| | " + " | ".join(cols) + " | Mean |",
    "|---|" + "---|" * (len(cols) + 1),
  ]
  for key, label in (("f1", "F1"), ("iou", "IoU")):
    lines.append(f"| {label} | " + " | ".join(_f(r[key]) for r in ok) + f" | {_f(_mean(ok, key))} |")
  lines.append("| images | " + " | ".join(str(r["n_forged"]) for r in ok) + " | |")
  notes = [
    f"F1 / IoU: mean over manipulated images of per-image pixel scores at threshold 0.5; Mean: over the "
    f"{len(ok)} set(s) evaluated."
  ]
  if any(c.endswith("*") for c in cols):
    diff = [r for r in ok if r["n_paper"] and r["n_forged"] != r["n_paper"]]
    notes.append(
      "*: image count differs from the paper's list ("
      + ", ".join(f"{r['dataset']} {r['n_forged']} vs {r['n_paper']}" for r in diff)
      + ")."
    )
  for r in rows:
    if "error" in r:
      notes.append(f"{r['dataset']}: failed: {r['error']}")
  if missing:
    notes.append("Not evaluated (not found): " + "; ".join(f"{n} ({why})" for n, why in missing) + ".")
  return "\n".join(lines) + "\n\n" + "\n".join(f"{i + 1}. {n}" for i, n in enumerate(notes)) + "\n"


def write_suite(
  name: str, rows: Sequence[dict], missing: Sequence[tuple[str, str]], out_dir: str, meta: dict | None = None
) -> dict[str, str]:
  """Writes suite_<name>.md / .json / .csv under `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"suite_{name}.{k}") for k in ("md", "json", "csv")}
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(suite_markdown(name, rows, missing))
  ok = [r for r in rows if "error" not in r]
  mean = {"f1": _mean(ok, "f1"), "iou": _mean(ok, "iou"), "num_sets": len(ok)}
  clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(
      {
        "suite": name,
        "meta": meta or {},
        "rows": [{k: clean(v) for k, v in r.items()} for r in rows],
        "mean": {k: clean(v) for k, v in mean.items()},
        "missing": [{"dataset": n, "why": w} for n, w in missing],
      },
      f,
      indent=1,
    )
  keys = ["dataset", "n_paper", "n_images", "n_forged", "n_failed", "f1", "iou", "spec", "error"]
  with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(keys)
    for r in rows:
      w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    w.writerow(["Mean", "", "", "", "", mean["f1"], mean["iou"], f"{len(ok)} sets", ""])
    for n, why in missing:
      w.writerow([n, "", "", "", "", "", "", "", f"not found: {why}"])
  return paths
