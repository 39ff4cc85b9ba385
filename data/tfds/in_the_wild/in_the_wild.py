"""TFDS builder `in_the_wild` (test split), manual download.

Release: In-the-Wild (Huh et al., ECCV 2018, `label_in_wild`): 201 spliced images from the internet.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/images/*.jpg
  <manual_dir>/masks/*.png   white = spliced, matched by file stem
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class InTheWild(LayoutBuilder):
  """In-the-Wild (Huh et al., ECCV 2018, `label_in_wild`): 201 spliced images from the internet."""

  LAYOUT = "in_the_wild"
  SPLIT = "test"
  HOMEPAGE = "https://minyoungg.github.io/selfconsistency/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
