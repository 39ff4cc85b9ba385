"""TFDS builder `tamp_coco` (train split), manual download.

Release: tampCOCO (Kwon et al., CAT-Net, IJCV 2022): COCO-based splicing (sp), copy-move (cm) and
JPEG-recompressed copy-move (bcm, bcmc) forgeries; training set of the CAT-Net mixture.
Layout of the manual dir (also accepted: images/ + masks/, masks white = tampered):
  <manual_dir>/{sp,cm,bcm,bcmc}_images/A.jpg_B.jpg.jpg
  <manual_dir>/{sp,cm,bcm,bcmc}_masks/A.png_B.png.png   white = tampered: the image name with every '.jpg'
  made '.png' (else matched by file stem); any subset of the four
Only the manipulated images are kept (the paper's lists). Features as every builder here
(`data/common.py`): 'image_bytes' (the original file), 'mask_bytes' (binary PNG), 'path', 'kind'.
"""

from data.common import LayoutBuilder

_MANUAL = __doc__.split("Layout of the manual dir", 1)[1].split("Only the", 1)[0]


class TampCoco(LayoutBuilder):
  """tampCOCO (Kwon et al., CAT-Net, IJCV 2022): COCO-based splicing (sp), copy-move (cm) and"""

  LAYOUT = "tampcoco"
  SPLIT = "train"
  HOMEPAGE = "https://github.com/mjkwon2021/CAT-Net"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
