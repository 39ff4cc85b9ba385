"""TFDS builder `columbia` (test split), manual download.

Release: the Columbia Uncompressed Image Splicing Detection Evaluation Dataset (Hsu & Chang, ICME 2006):
180 spliced TIFFs (4cam_splc) and 183 authentic ones (4cam_auth, not used).
Layout of the manual dir, either the distribution's colour edge-masks
  <manual_dir>/4cam_splc/*.tif  +  <manual_dir>/4cam_splc/edgemask/*_edgemask.jpg
(red region = spliced, green = authentic: R > 127 and G < 128 is tampered; check it against your copy,
Columbia releases differ, and the binary-mask layout avoids the question), or ready binary masks
  <manual_dir>/images/*.tif  +  <manual_dir>/masks/*.png   (white = tampered, matched by stem)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

import numpy as np

from data.common import LayoutBuilder


def _edgemask_to_binary(rgb: np.ndarray) -> np.ndarray:
  """Columbia edge-masks: red-ish region = spliced (R > 127 and G < 128), green = authentic."""
  r, g = rgb[..., 0].astype(int), rgb[..., 1].astype(int)
  return ((r > 127) & (g < 128)).astype(np.uint8)


_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Columbia(LayoutBuilder):
  """Columbia uncompressed image splicing detection evaluation dataset."""

  LAYOUT = "columbia"
  SPLIT = "test"
  HOMEPAGE = "https://www.ee.columbia.edu/ln/dvmm/downloads/authsplcuncmp/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
