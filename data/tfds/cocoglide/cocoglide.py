"""TFDS builder `cocoglide` (test split), manual download.

Release: CocoGlide (Guillaro et al., TruFor, CVPR 2023): 512 GLIDE-inpainted COCO images.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/fake/*.png
  <manual_dir>/mask/*.png   white = inpainted, same file names (real/ is not used)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Cocoglide(LayoutBuilder):
  """CocoGlide (Guillaro et al., TruFor, CVPR 2023): 512 GLIDE-inpainted COCO images."""

  LAYOUT = "cocoglide"
  SPLIT = "test"
  HOMEPAGE = "https://github.com/grip-unina/TruFor"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
