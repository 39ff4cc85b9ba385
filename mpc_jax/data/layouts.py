"""The folder layouts of the public forensic datasets: which file is an image, which its mask.

A downloaded release is read as published, without conversion: `layout_pairs(name, root)` lists its
forged images with their masks (the releases, their layouts and mask codings are listed there), and
`layout_source(name, root)` wraps that in a `PairSource` (spec `layout:NAME:ROOT`). The TFDS builders in
`data/tfds/` and `mpc-jax eval --suite` use these listings.

Not supported: FF++, a video dataset whose masks are videos (`manipulated_sequences/<method>/masks/videos/`)
and whose frame sampling the paper does not publish; extract frames and binarised masks to `images/` +
`masks/` PNGs, which any spec reads (the suite's `ffpp` entry looks for that folder).
"""

from __future__ import annotations

import csv
import inspect
import os
import re

from mpc_jax.data.io import BadExampleError

__all__ = ["LAYOUTS", "layout_pairs", "layout_source", "find_dir"]


def find_dir(root: str, *names: str) -> str | None:
  """The first of `names` (a relative path; case-insensitive per part) that is a folder under `root`."""
  for name in names:
    cur = root
    for part in name.split("/"):
      if not os.path.isdir(cur):
        cur = None
        break
      exact = os.path.join(cur, part)
      if os.path.isdir(exact):
        cur = exact
        continue
      low = part.lower()
      cur = next(
        (
          os.path.join(cur, f)
          for f in sorted(os.listdir(cur))
          if f.lower() == low and os.path.isdir(os.path.join(cur, f))
        ),
        None,
      )
      if cur is None:
        break
    if cur is not None and os.path.isdir(cur):
      return cur
  return None


def _images(d: str) -> list[str]:
  from mpc_jax.data.sources import IMAGE_EXTENSIONS

  if not d or not os.path.isdir(d):
    return []
  return sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _match(images_dir: str, masks_dir: str, keep=lambda f: True, unmatched: str = "bad", names=lambda f: ()):
  """Images of `images_dir` (those `keep` accepts) with their masks in `masks_dir`, by stem. An image
  without a mask is an error (`unmatched='bad'`: releases that name their forged files) or authentic
  (`'authentic'`: folders that mix both, e.g. images/ + masks/). `names(f)`: mask file names tried first."""
  from mpc_jax.data.sources import mask_key

  by_stem, files = {}, set(_images(masks_dir))
  for f in _images(masks_dir):
    by_stem.setdefault(os.path.splitext(f)[0], f)
  for f in _images(masks_dir):
    by_stem.setdefault(mask_key(os.path.splitext(f)[0]), f)
  pairs, errors = [], []
  for f in _images(images_dir):
    if not keep(f):
      continue
    m = next((n for n in names(f) if n in files), None) or by_stem.get(os.path.splitext(f)[0])
    if m is None and unmatched == "authentic":
      pairs.append((os.path.join(images_dir, f), None))
    elif m is None:
      errors.append(BadExampleError(os.path.join(images_dir, f), f"no mask in {masks_dir}"))
    else:
      pairs.append((os.path.join(images_dir, f), os.path.join(masks_dir, m)))
  return pairs, errors


def _generic(root):
  d_img, d_mask = find_dir(root, "images"), find_dir(root, "masks")
  if d_img and d_mask:
    return _match(d_img, d_mask, unmatched="authentic")
  return None


def _columbia(root):
  splc = find_dir(root, "4cam_splc", "Columbia Uncompressed Image Splicing Detection/4cam_splc")
  if splc is None and find_dir(root, "edgemask"):
    splc = root
  edge = find_dir(splc, "edgemask") if splc else None
  if edge is None:
    return None
  return _match(splc, edge) + ("columbia",)


def _dso1(root):
  base = find_dir(root, "tifs-database") or root
  img, msk = find_dir(base, "DSO-1"), find_dir(base, "DSO-1-Fake-Images-Masks")
  if not (img and msk):
    return None
  return _match(img, msk, keep=lambda f: f.lower().startswith("splicing")) + ("inverted",)


def _casia_v1(root):
  base = find_dir(root, "CASIA 1.0 dataset") or root
  gt = find_dir(
    root,
    "CASIA 1.0 groundtruth",
    "CASIA1.0 groundtruth",
    "CASIA 1.0 dataset/CASIA 1.0 groundtruth",
    "groundtruth",
    "gt",
  )
  if gt is None:
    return None
  pairs, errors = [], []
  for kind in ("Sp", "CM"):
    img = find_dir(base, f"Modified Tp/Tp/{kind}", f"Tp/{kind}")
    if img is None:
      continue
    p, e = _match(img, find_dir(gt, kind) or gt)
    pairs += p
    errors += e
  return (pairs, errors, "binary") if pairs or errors else None


def _nist16(root):
  ref = find_dir(root, "reference/manipulation")
  csvs = sorted(f for f in os.listdir(ref) if f.lower().endswith("-manipulation-ref.csv")) if ref else []
  if csvs:
    pairs, errors = [], []
    with open(os.path.join(ref, csvs[0]), encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f, delimiter="|"))
    for row in rows:
      if row.get("IsTarget", "Y").strip().upper() != "Y" or not (row.get("ProbeMaskFileName") or "").strip():
        continue
      img = os.path.join(root, row["ProbeFileName"].strip())
      mask = os.path.join(root, row["ProbeMaskFileName"].strip())
      if not os.path.isfile(mask):
        errors.append(BadExampleError(mask, f"file not found: mask of {img}"))
        continue
      pairs.append((img, mask))
    return pairs, errors, "inverted"
  probe, mask = find_dir(root, "probe"), find_dir(root, "mask", "reference/manipulation/mask")
  if probe and mask:
    return _match(probe, mask) + ("inverted",)
  return None


def _coverage(root):
  img, msk = find_dir(root, "image"), find_dir(root, "mask")
  if not (img and msk):
    return None
  masks = {f.lower(): f for f in _images(msk)}
  pairs, errors = [], []
  for f in _images(img):
    m = re.fullmatch(r"(\d+)t", os.path.splitext(f)[0])
    if not m:
      continue  # {N}.tif: the pristine original
    want = next((masks[k] for k in masks if os.path.splitext(k)[0] == f"{m.group(1)}forged"), None)
    if want is None:
      errors.append(BadExampleError(os.path.join(img, f), f"no {m.group(1)}forged.* in {msk}"))
    else:
      pairs.append((os.path.join(img, f), os.path.join(msk, want)))
  return pairs, errors, "binary"


def _korus(root):
  base = find_dir(root, "data-images") or root
  cams = [
    os.path.join(base, d)
    for d in sorted(os.listdir(base))
    if find_dir(os.path.join(base, d), "tampered-realistic")
  ]
  if not cams:
    return None
  pairs, errors = [], []
  for cam in cams:
    gt = find_dir(cam, "ground-truth")
    if gt is None:
      errors.append(BadExampleError(cam, "no ground-truth/ folder"))
      continue
    p, e = _match(find_dir(cam, "tampered-realistic"), gt)
    pairs += p
    errors += e
  return pairs, errors, "nonzero"


def _two_dirs(images, masks, mode="binary"):
  def fn(root):
    img = find_dir(root, *images)
    msk = find_dir(root, *masks)
    if not (img and msk):
      return None
    return _match(img, msk, unmatched="authentic") + (mode,)

  return fn


def _tampcoco(root):
  pairs, errors, found = [], [], False
  for kind in ("sp", "cm", "bcm", "bcmc"):
    img, msk = find_dir(root, f"{kind}_images"), find_dir(root, f"{kind}_masks")
    if img and msk:
      found = True
      # CAT-Net's release: sp_images/A.jpg_B.jpg.jpg <-> sp_masks/A.png_B.png.png
      p, e = _match(
        img, msk, unmatched="authentic", names=lambda f: (re.sub(r"\.jpe?g", ".png", f, flags=re.I),)
      )
      pairs += p
      errors += e
  return (pairs, errors, "binary") if found else None


def _imd2020(root):
  base = find_dir(root, "IMD2020") or root
  pairs, errors, found = [], [], False
  for d in sorted(os.listdir(base)):
    sub = os.path.join(base, d)
    if not os.path.isdir(sub):
      continue
    files = _images(sub)
    stems = {os.path.splitext(f)[0]: f for f in files}
    if not any(s.endswith("_orig") for s in stems):
      continue
    found = True
    for stem, f in stems.items():
      if stem.endswith(("_orig", "_mask")):
        continue
      m = stems.get(stem + "_mask")
      if m is None:
        errors.append(BadExampleError(os.path.join(sub, f), "no <name>_mask.* next to it"))
      else:
        pairs.append((os.path.join(sub, f), os.path.join(sub, m)))
  return (pairs, errors, "binary") if found else None


def _casia_v2(root):
  tp = find_dir(root, "Tp")
  gt = find_dir(root, "Groundtruth", "CASIA 2 Groundtruth", "CASIA2 Groundtruth", "gt")
  if not (tp and gt):
    return None
  return _match(tp, gt) + ("binary",)


LAYOUTS = {
  "columbia": _columbia,
  "dso1": _dso1,
  "casia_v1": _casia_v1,
  "nist16": _nist16,
  "coverage": _coverage,
  "korus": _korus,
  "in_the_wild": _two_dirs(("images",), ("masks",)),
  "cocoglide": _two_dirs(("fake", "CocoGlide/fake"), ("mask", "CocoGlide/mask")),
  "misd": _two_dirs(("Sp",), ("GT", "Sp_GT", "Binary_masks", "Binary masks", "masks", "mask")),
  "tampcoco": _tampcoco,
  "imd2020": _imd2020,
  "casia_v2": _casia_v2,
}


def layout_pairs(name: str, root) -> tuple[list[tuple[str, str | None]], str, list[BadExampleError]]:
  """(pairs of image + mask (None: authentic), mask_mode, listing errors) of release `name` under `root`.

  The pairs are the release's **forged** images (the paper's test lists hold only manipulated images);
  in folders that mix forged and authentic images (e.g. images/ + masks/) an image without a mask is
  authentic: `(image, None)`. Every release also accepts the plain `ROOT/images/` + `ROOT/masks/` layout
  (masks matched by stem, white = tampered). The error for a folder in neither layout quotes the
  release's line below.

  Releases (name: layout; mask coding):
    columbia     Columbia uncompressed: 4cam_splc/*.tif + 4cam_splc/edgemask/*_edgemask.jpg; red = spliced
    dso1         tifs-database: DSO-1/splicing-*.png + DSO-1-Fake-Images-Masks/splicing-*.png; black = spliced
    casia_v1     CASIA 1.0 + casia1groundtruth: Tp/{Sp,CM}/*.jpg (or Modified Tp/Tp/...) +
                 CASIA 1.0 groundtruth/{Sp,CM}/*_gt.png; white
    nist16       NC2016_Test0613: reference/manipulation/*-manipulation-ref.csv ('|'-separated; rows with
                 IsTarget=Y and a ProbeMaskFileName), else probe/ + mask/; black = manipulated
    coverage     COVERAGE: image/{N}t.tif + mask/{N}forged.tif; white
    korus        realistic-tampering: <camera>/tampered-realistic/*.TIF + <camera>/ground-truth/*.PNG;
                 any non-black (white and grey 'collateral damage')
    in_the_wild  Huh et al. 2018: images/ + masks/; white
    cocoglide    TruFor's CocoGlide: fake/ + mask/; white
    misd         MISD: Sp/ + one of GT/, Sp_GT/, Binary_masks/, masks/, mask/; white
    tampcoco     CAT-Net's tampCOCO: {sp,cm,bcm,bcmc}_images/X.jpg_Y.jpg.jpg + {...}_masks/X.png_Y.png.png
                 (every '.jpg' of the name becomes '.png'; else matched by stem); white
    imd2020      IMD2020: <id>/<id>_orig.jpg (not used), <id>/<name>.jpg + <id>/<name>_mask.png; white
    casia_v2     CASIA v2.0: Tp/ + Groundtruth/ (*_gt.png; also 'CASIA 2 Groundtruth/'); white

  Raises FileNotFoundError naming the folder when neither the release's layout nor images/ + masks/
  is found, ValueError for an unknown name."""
  key = name.lower().replace("-", "_")
  if key not in LAYOUTS:
    raise ValueError(f"unknown layout {name!r}; known: {', '.join(sorted(LAYOUTS))}")
  root = os.path.expanduser(os.fspath(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{name}: folder not found: {root}")
  found = LAYOUTS[key](root)
  if found is None:
    generic = _generic(root)
    if generic is None:
      doc = next(
        (
          line[len(key) + 3 :].strip()
          for line in inspect.getdoc(layout_pairs).splitlines()
          if line.startswith(f"  {key} ")
        ),
        "",
      )
      raise FileNotFoundError(f"{root}: not the {name} layout ({doc}) nor images/ + masks/")
    found = generic + ("binary",)
  pairs, errors, mode = found
  return pairs, mode, errors


def layout_source(name: str, root, *, on_bad_example: str = "raise", check_files: str = "header"):
  """A `PairSource` over release `name` under `root` (spec `layout:NAME:ROOT`)."""
  from mpc_jax.data.sources import PairSource

  pairs, mode, errors = layout_pairs(name, root)
  return PairSource(
    pairs,
    on_bad_example=on_bad_example,
    check_files=check_files,
    name=f"{name}:{root}",
    missing=errors,
    mask_mode=mode,
  )
