"""TFDS builder for the Columbia uncompressed splicing set (180 spliced TIFFs), manual download.

Layout in the manual dir, either ready binary masks (preferred; white = tampered, matched by stem)
  <manual_dir>/images/*.tif  +  <manual_dir>/masks/*.png
or the distribution's colour edge-masks
  <manual_dir>/4cam_splc/*.tif  +  <manual_dir>/4cam_splc/edgemask/*_edgemask.jpg
which are converted with `_edgemask_to_binary` (red = spliced region, green = authentic region;
check it against your copy: Columbia releases differ, the binary-mask layout avoids the question).
Features as `casia_v2`: 'image_bytes' (original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from data.common import file_bytes, forgery_info, png_bytes

log = logging.getLogger(__name__)

_MANUAL = """\
Place the Columbia uncompressed set in the manual dir as
  <manual_dir>/4cam_splc/*.tif             spliced images
  <manual_dir>/4cam_splc/edgemask/*.jpg    Columbia's colour edge-masks
or with ready binary masks:
  <manual_dir>/images/*.tif  +  <manual_dir>/masks/*.png   (white = tampered)
"""


def _edgemask_to_binary(rgb: np.ndarray) -> np.ndarray:
    """Columbia edge-masks: red-ish region = spliced (R > 127 and G < 128), green = authentic."""
    r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
    return ((r > 127) & (g < 128)).astype(np.uint8)


class Columbia(tfds.core.GeneratorBasedBuilder):
    """Columbia uncompressed image splicing detection evaluation dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

    def _info(self) -> tfds.core.DatasetInfo:
        return forgery_info(self, homepage="https://www.ee.columbia.edu/ln/dvmm/downloads/authsplcuncmp/")

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(os.fspath(dl_manager.manual_dir))}

    def _generate_examples(self, root):
        from mpc_jax.data.io import BadExampleError, read_image, read_mask
        from mpc_jax.data.sources import pairs_from_folder

        if os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(root, "masks")):
            pairs, _ = pairs_from_folder(os.path.join(root, "images"), os.path.join(root, "masks"))
            edge = False
        else:
            splc = os.path.join(root, "4cam_splc")
            if not os.path.isdir(os.path.join(splc, "edgemask")):
                raise FileNotFoundError(f"{root}: expected 4cam_splc/edgemask or images/+masks/.\n{_MANUAL}")
            pairs, _ = pairs_from_folder(splc, os.path.join(splc, "edgemask"))
            edge = True
        for img_path, mask_path in pairs:
            rel = os.path.relpath(img_path, root)
            try:
                image = read_image(img_path)
                if edge:
                    m = _edgemask_to_binary(read_image(mask_path))
                    if m.shape != image.shape[:2]:
                        raise BadExampleError(mask_path, "edge-mask size differs from its image")
                else:
                    m = read_mask(mask_path, expected_hw=image.shape[:2])
            except BadExampleError as e:
                log.warning("columbia: skipped %s", e)
                continue
            yield rel, {"image_bytes": file_bytes(img_path), "mask_bytes": png_bytes(m), "path": rel,
                        "kind": "tampered"}
