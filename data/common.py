"""What the forensic TFDS builders (`data/tfds/<name>/`) share: their features, file helpers, and
`LayoutBuilder`, a builder over a public release's folder layout (`mpc_jax.data.layouts`).

Features: 'image_bytes' (the original file, byte for byte), 'mask_bytes' (a binary PNG, 0/255;
empty for authentic), 'path' (relative to the manual dir), 'kind'.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds

log = logging.getLogger(__name__)


def forgery_info(builder: tfds.core.GeneratorBasedBuilder, homepage: str) -> tfds.core.DatasetInfo:
  """The DatasetInfo of every builder here (see the module docstring for the features)."""
  return builder.dataset_info_from_configs(
    features=tfds.features.FeaturesDict(
      {
        "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
        "mask_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
        "path": tfds.features.Text(),
        "kind": tfds.features.Text(),
      }
    ),
    homepage=homepage,
  )


def list_images(d):
  from mpc_jax.data.sources import IMAGE_EXTENSIONS

  if not os.path.isdir(d):
    return []
  return sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def file_bytes(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def png_bytes(mask01: np.ndarray) -> bytes:
  """Binary mask -> PNG bytes (0/255); b'' when the mask is empty (authentic)."""
  from mpc_jax.data.io import encode_mask_png

  return encode_mask_png(mask01)


def layout_examples(layout: str, root: str, name: str):
  """`(key, example)` for every forged image of release `layout` under `root` (unusable pairs are
  logged with their file and skipped)."""
  from mpc_jax.data.io import BadExampleError
  from mpc_jax.data.layouts import layout_pairs
  from mpc_jax.data.sources import PairSource

  pairs, mode, errors = layout_pairs(layout, root)
  for err in errors:
    log.warning("%s: skipped %s", name, err)
  src = PairSource(pairs, check_files="none", mask_mode=mode, name=name)
  for i in range(len(src)):
    try:
      ex = src.raw(i)
    except BadExampleError as err:
      log.warning("%s: skipped %s", name, err)
      continue
    rel = os.path.relpath(ex["path"], root)
    yield (
      rel,
      {
        "image_bytes": ex["image_bytes"],
        "mask_bytes": ex["mask_bytes"],
        "path": rel,
        "kind": "tampered" if len(ex["mask_bytes"]) else "authentic",
      },
    )


class LayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A manual-download builder reading the release layout `LAYOUT` (one split, `SPLIT`).

  Subclasses set LAYOUT, SPLIT ('test' or 'train'), HOMEPAGE and MANUAL_DOWNLOAD_INSTRUCTIONS."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LAYOUT = ""
  SPLIT = "test"
  HOMEPAGE = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return forgery_info(self, homepage=self.HOMEPAGE)

  def _split_generators(self, dl_manager):
    return {self.SPLIT: self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, root):
    yield from layout_examples(self.LAYOUT, root, self.name)
