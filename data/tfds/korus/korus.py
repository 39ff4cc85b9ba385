"""TFDS builder `korus` (test split), manual download.

Release: Realistic Tampering Dataset v2.0 (Korus & Huang 2016/2017): 220 forgeries, 4 cameras, 1920x1080 TIFF.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/<camera>/tampered-realistic/*.TIF
  <manual_dir>/<camera>/ground-truth/*.PNG   3-level maps: white (semantic change) and grey
  (collateral damage) both count as tampered, black = authentic
  (<camera>: Canon_60D, Nikon_D90, Nikon_D7000, Sony_A57; a data-images/ level is accepted)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Korus(LayoutBuilder):
  """Realistic Tampering Dataset v2.0 (Korus & Huang 2016/2017): 220 forgeries, 4 cameras, 1920x1080 TIFF."""

  LAYOUT = "korus"
  SPLIT = "test"
  HOMEPAGE = "http://kt.agh.edu.pl/~korus/downloads/dataset-realistic-tampering/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
