"""TFDS builder `dso1` (test split), manual download.

Release: DSO-1 (Carvalho et al., TIFS 2013), the `tifs-database` archive: 100 spliced + 100 normal PNGs.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/tifs-database/DSO-1/splicing-*.png (normal-*.png: authentic, not used)
  <manual_dir>/tifs-database/DSO-1-Fake-Images-Masks/splicing-*.png   masks, BLACK = spliced
  (the tifs-database/ level may be left out)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Dso1(LayoutBuilder):
  """DSO-1 (Carvalho et al., TIFS 2013), the `tifs-database` archive: 100 spliced + 100 normal PNGs."""

  LAYOUT = "dso1"
  SPLIT = "test"
  HOMEPAGE = "https://recodbr.wordpress.com/code-n-data/#dso1_dsi1"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
