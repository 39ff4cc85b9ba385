"""TFDS builder `imd2020` (train split), manual download.

Release: IMD2020 (Novozamsky et al., WACV-W 2020), the 'real-life manipulated images' part: 2,010 forgeries.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/IMD2020/<id>/<id>_orig.jpg      the original (not used)
  <manual_dir>/IMD2020/<id>/<name>.jpg|png      forged
  <manual_dir>/IMD2020/<id>/<name>_mask.png     mask, white = manipulated
  (the IMD2020/ level may be left out)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Imd2020(LayoutBuilder):
  """IMD2020 (Novozamsky et al., WACV-W 2020), the 'real-life manipulated images' part: 2,010 forgeries."""

  LAYOUT = "imd2020"
  SPLIT = "train"
  HOMEPAGE = "http://staff.utia.cas.cz/novozada/db/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
