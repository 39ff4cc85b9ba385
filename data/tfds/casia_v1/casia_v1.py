"""TFDS builder `casia_v1` (test split), manual download.

Release: CASIA 1.0 (921 tampered JPEGs) with the masks of github.com/namtpham/casia1groundtruth.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/CASIA 1.0 dataset/Modified Tp/Tp/{Sp,CM}/*.jpg   (or <manual_dir>/Tp/{Sp,CM}/*.jpg)
  <manual_dir>/CASIA 1.0 groundtruth/{Sp,CM}/*_gt.png             masks, white = tampered
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class CasiaV1(LayoutBuilder):
  """CASIA 1.0 (921 tampered JPEGs) with the masks of github.com/namtpham/casia1groundtruth."""

  LAYOUT = "casia_v1"
  SPLIT = "test"
  HOMEPAGE = "https://github.com/namtpham/casia1groundtruth"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
