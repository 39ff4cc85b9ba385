"""TFDS builder `coverage` (test split), manual download.

Release: COVERAGE (Wen et al., ICIP 2016): 100 copy-move forgeries with their originals.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/image/{N}t.tif   forged ({N}.tif: the original, not used)
  <manual_dir>/mask/{N}forged.tif   masks, white = forged ({N}copy.tif / {N}paste.tif are not used)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Coverage(LayoutBuilder):
  """COVERAGE (Wen et al., ICIP 2016): 100 copy-move forgeries with their originals."""

  LAYOUT = "coverage"
  SPLIT = "test"
  HOMEPAGE = "https://github.com/wenbihan/coverage"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
