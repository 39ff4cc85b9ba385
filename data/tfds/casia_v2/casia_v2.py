"""TFDS builder for CASIA v2.0 (tampered `Tp/` + authentic `Au/` + ground truth), manual download.

Features: 'image_bytes' (the original file, byte for byte: no re-encoding, JPEG traces intact),
'mask_bytes' (a binary PNG, 0/255; empty for authentic),
'path' (the image's path relative to the manual dir), 'kind' ('tampered' | 'authentic').
Masks are matched to images by stem (`Tp_X.jpg` <-> `Tp_X_gt.png`); the raw files are decoded with
`mpc_jax.data.io`, so every bit depth and colour mode is handled as the rest of the project does, and
unreadable pairs / size mismatches are skipped and logged (CASIAv2 has a few). Build without TensorFlow:
`file_format='array_record'`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from data.common import file_bytes, forgery_info, list_images, png_bytes

log = logging.getLogger(__name__)

_MANUAL = """\
Place CASIA v2.0 in the manual dir as
  <manual_dir>/Tp/*.jpg|tif              tampered images
  <manual_dir>/Au/*.jpg                  authentic images (optional)
  <manual_dir>/Groundtruth/*_gt.png      masks (also accepted: 'CASIA 2 Groundtruth/', 'gt/')
"""
_GT_DIRS = ("Groundtruth", "CASIA 2 Groundtruth", "CASIA2 Groundtruth", "gt", "GT", "masks")


class CasiaV2(tfds.core.GeneratorBasedBuilder):
  """CASIA v2.0 splicing / copy-move dataset with pixel masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def _info(self) -> tfds.core.DatasetInfo:
    return forgery_info(self, homepage="https://github.com/namtpham/casia2groundtruth")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return {"train": self._generate_examples(root)}

  def _generate_examples(self, root):
    from mpc_jax.data.io import BadExampleError, read_image, read_mask
    from mpc_jax.data.sources import mask_key

    gt_dir = next((os.path.join(root, g) for g in _GT_DIRS if os.path.isdir(os.path.join(root, g))), None)
    if gt_dir is None or not os.path.isdir(os.path.join(root, "Tp")):
      raise FileNotFoundError(f"{root}: expected Tp/ and a ground-truth folder.\n{_MANUAL}")
    masks = {mask_key(os.path.splitext(f)[0]): f for f in list_images(gt_dir)}
    items = [
      ("tampered", os.path.join("Tp", f), masks.get(os.path.splitext(f)[0]))
      for f in list_images(os.path.join(root, "Tp"))
    ]
    items += [("authentic", os.path.join("Au", f), None) for f in list_images(os.path.join(root, "Au"))]
    for kind, rel, mask_name in items:
      if kind == "tampered" and mask_name is None:
        log.warning("casia_v2: no mask for %s, skipped", rel)
        continue
      try:
        image = read_image(os.path.join(root, rel))
        if mask_name is None:
          mask = np.zeros(image.shape[:2], np.uint8)
        else:
          mask = read_mask(os.path.join(gt_dir, mask_name), expected_hw=image.shape[:2])
      except BadExampleError as e:
        log.warning("casia_v2: skipped %s", e)
        continue
      yield (
        rel,
        {
          "image_bytes": file_bytes(os.path.join(root, rel)),
          "mask_bytes": png_bytes(mask),
          "path": rel,
          "kind": kind,
        },
      )
