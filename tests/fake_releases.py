"""Tiny fake copies of the public forensic releases' folder layouts (generated images, never real data).

`make(name, root, seed)` writes one and returns {relative image path: expected binary mask uint8 [H, W]}
for its manipulated images. Every forged image carries its mask in the red channel (255 = tampered),
so an oracle that reads the red channel scores F1 = IoU = 1 exactly when the layout and the mask
coding (white / black / 3-level / edge-mask) are read right. Masks are full-width bands on the 8-px grid.
"""

import csv
import os

import cv2
import numpy as np
from PIL import Image

H, W = 32, 40


def _pair(rng, k):
  m = np.zeros((H, W), np.uint8)
  m[8 * (k % 2 + 1) : 8 * (k % 2 + 1) + 8 + 8 * (k % 2)] = 1
  img = np.zeros((H, W, 3), np.uint8)
  img[..., 0] = m * 255
  img[..., 1] = rng.integers(0, 256, (H, W))
  img[..., 2] = rng.integers(0, 256, (H, W))
  return img, m


def _save(path, arr, **kw):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ext = os.path.splitext(path)[1].lower()
  if ext in (".jpg", ".jpeg"):
    kw = {"quality": 100, "subsampling": 0, **kw}
  Image.fromarray(arr).save(path, **kw)


def _authentic(rng):
  img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  img[..., 0] = 0
  return img


def make(name, root, seed=0):
  rng = np.random.default_rng(seed)
  root = str(root)
  out = {}

  def forged(rel_img, rel_mask, k, coding="white"):
    img, m = _pair(rng, k)
    _save(os.path.join(root, rel_img), img)
    if coding == "white":
      mask = m * 255
    elif coding == "black":
      mask = (1 - m) * 255
    elif coding == "3level":  # white core, grey 'collateral damage' rim inside the tampered band
      mask = m * 255
      rows = np.where(m.any(1))[0]
      mask[rows[0]] = 64
    elif coding == "edge":  # Columbia: red = spliced, green = authentic
      mask = np.zeros((H, W, 3), np.uint8)
      mask[m == 1] = (255, 0, 0)
      mask[m == 0] = (0, 255, 0)
    _save(os.path.join(root, rel_mask), mask.astype(np.uint8))
    out[rel_img] = m

  if name == "columbia":
    for k in range(2):
      forged(
        f"4cam_splc/canong3_canonxt_sub_0{k}.tif",
        f"4cam_splc/edgemask/canong3_canonxt_sub_0{k}_edgemask.jpg",
        k,
        "edge",
      )
    _save(os.path.join(root, "4cam_auth", "canong3_02_sub_01.tif"), _authentic(rng))
  elif name == "dso1":
    for k in range(2):
      forged(
        f"tifs-database/DSO-1/splicing-0{k + 1}.png",
        f"tifs-database/DSO-1-Fake-Images-Masks/splicing-0{k + 1}.png",
        k,
        "black",
      )
    _save(os.path.join(root, "tifs-database", "DSO-1", "normal-01.png"), _authentic(rng))
  elif name == "casia_v1":
    forged(
      "CASIA 1.0 dataset/Modified Tp/Tp/Sp/Sp_D_CND_A_pla0005_pla0023_0281.jpg",
      "CASIA 1.0 groundtruth/Sp/Sp_D_CND_A_pla0005_pla0023_0281_gt.png",
      0,
    )
    forged(
      "CASIA 1.0 dataset/Modified Tp/Tp/CM/Sp_S_CND_A_pla0016_pla0016_0196.jpg",
      "CASIA 1.0 groundtruth/CM/Sp_S_CND_A_pla0016_pla0016_0196_gt.png",
      1,
    )
    _save(os.path.join(root, "CASIA 1.0 dataset", "Au", "Au_ani_0001.jpg"), _authentic(rng))
  elif name == "nist16":
    rows = []
    for k in range(2):
      forged(f"probe/NC2016_{k:04d}.jpg", f"reference/manipulation/mask/NC2016_{k + 50:04d}.png", k, "black")
      rows.append(
        [
          "manipulation",
          f"NC2016_{k:04d}",
          f"probe/NC2016_{k:04d}.jpg",
          f"reference/manipulation/mask/NC2016_{k + 50:04d}.png",
          "",
          "Y",
        ]
      )
    _save(os.path.join(root, "probe", "NC2016_0009.jpg"), _authentic(rng))
    rows.append(["manipulation", "NC2016_0009", "probe/NC2016_0009.jpg", "", "", "N"])
    with open(
      os.path.join(root, "reference", "manipulation", "NC2016-manipulation-ref.csv"), "w", newline=""
    ) as f:
      w = csv.writer(f, delimiter="|")
      w.writerow(["TaskID", "ProbeFileID", "ProbeFileName", "ProbeMaskFileName", "DonorFileID", "IsTarget"])
      w.writerows(rows)
  elif name == "coverage":
    for k in range(2):
      forged(f"image/{k + 1}t.tif", f"mask/{k + 1}forged.tif", k)
      _save(os.path.join(root, "image", f"{k + 1}.tif"), _authentic(rng))
      _save(os.path.join(root, "mask", f"{k + 1}copy.tif"), np.zeros((H, W), np.uint8))
  elif name == "korus":
    for k, cam in enumerate(("Canon_60D", "Sony_A57")):
      forged(f"{cam}/tampered-realistic/r{k}a2b3c4d.TIF", f"{cam}/ground-truth/r{k}a2b3c4d.PNG", k, "3level")
      _save(os.path.join(root, cam, "pristine", f"r{k}a2b3c4d.TIF"), _authentic(rng))
  elif name == "in_the_wild":
    for k in range(2):
      forged(f"images/wild_{k}.jpg", f"masks/wild_{k}.png", k)
  elif name == "cocoglide":
    for k in range(2):
      forged(f"fake/glide_inpainting_val2017_{k}_up.png", f"mask/glide_inpainting_val2017_{k}_up.png", k)
    _save(os.path.join(root, "real", "val2017_0.png"), _authentic(rng))
  elif name == "misd":
    for k in range(2):
      forged(f"Sp/Sp_{k}_multi.jpg", f"GT/Sp_{k}_multi.png", k)
    _save(os.path.join(root, "Au", "Au_0.jpg"), _authentic(rng))
  elif name == "tampcoco":
    forged(
      "sp_images/88_000000013140.jpg_000000574443.jpg.jpg",
      "sp_masks/88_000000013140.png_000000574443.png.png",
      0,
    )
    forged(
      "cm_images/7_000000000025.jpg_RT-5.8_RS1.18.jpg", "cm_masks/7_000000000025.png_RT-5.8_RS1.18.png", 1
    )
  elif name == "imd2020":
    for k, d in enumerate(("1a0c5x", "1a1ij1")):
      forged(f"IMD2020/{d}/{d}_0.jpg", f"IMD2020/{d}/{d}_0_mask.png", k)
      _save(os.path.join(root, "IMD2020", d, f"{d}_orig.jpg"), _authentic(rng))
  elif name == "images_masks":
    for k in range(2):
      forged(f"images/x{k}.png", f"masks/x{k}_gt.png", k)
  else:
    raise ValueError(name)
  return out


LAYOUT_OF_BUILDER = {
  "columbia": "columbia",
  "dso1": "dso1",
  "casia_v1": "casia_v1",
  "nist16": "nist16",
  "coverage": "coverage",
  "korus": "korus",
  "in_the_wild": "in_the_wild",
  "cocoglide": "cocoglide",
  "misd": "misd",
  "tamp_coco": "tampcoco",
  "imd2020": "imd2020",
}


def oracle(x):
  """A perfect 'model': logits at 1/4 resolution from the red channel (see the module docstring)."""
  b, h, w, _ = x.shape
  x = np.pad(np.asarray(x), ((0, 0), (0, (-h) % 4), (0, (-w) % 4), (0, 0)))
  y = x.reshape(b, x.shape[1] // 4, 4, x.shape[2] // 4, 4, 3).mean((2, 4))[..., :1]
  return (y - 0.5) * 100


def read_mask_png(data: bytes) -> np.ndarray:
  return (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
