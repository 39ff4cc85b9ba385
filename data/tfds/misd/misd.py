"""TFDS builder `misd` (test split), manual download.

Release: MISD, Multiple Image Splicing Dataset (Kadam et al. 2021): 300 multi-spliced + 618 authentic JPEGs.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/Sp/*.jpg
  <manual_dir>/GT/*.png   binary masks, white = spliced, matched by stem (also accepted: Sp_GT/,
  Binary_masks/, masks/, mask/)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Misd(LayoutBuilder):
  """MISD, Multiple Image Splicing Dataset (Kadam et al. 2021): 300 multi-spliced + 618 authentic JPEGs."""

  LAYOUT = "misd"
  SPLIT = "test"
  HOMEPAGE = "https://doi.org/10.7910/DVN/A2GKKM"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
