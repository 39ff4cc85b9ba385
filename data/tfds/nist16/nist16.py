"""TFDS builder `nist16` (test split), manual download.

Release: NIST Nimble 2016 (NC2016_Test0613): the manipulated probes with a mask in the reference CSV.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/probe/*.jpg
  <manual_dir>/reference/manipulation/NC2016-manipulation-ref.csv   '|'-separated, ProbeFileName, ProbeMaskFileName, IsTarget
  <manual_dir>/reference/manipulation/mask/*.png   masks, BLACK = manipulated
  (without the CSV: probe/ + mask/ matched by file stem)
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class Nist16(LayoutBuilder):
  """NIST Nimble 2016 (NC2016_Test0613): the manipulated probes with a mask in the reference CSV."""

  LAYOUT = "nist16"
  SPLIT = "test"
  HOMEPAGE = "https://www.nist.gov/itl/iad/mig/nimble-challenge-2017-evaluation"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
