"""What the forensic TFDS builders share: their features, and file helpers.

Features: 'image_bytes' (the original file, byte for byte), 'mask_bytes' (a binary PNG, 0/255;
empty for authentic), 'path' (relative to the manual dir), 'kind'.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds


def forgery_info(builder: tfds.core.GeneratorBasedBuilder, homepage: str) -> tfds.core.DatasetInfo:
    """The DatasetInfo of every builder here (see the module docstring for the features)."""
    return builder.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
            "mask_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
            "path": tfds.features.Text(),
            "kind": tfds.features.Text(),
        }),
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
    import cv2

    if not mask01.any():
        return b""
    ok, buf = cv2.imencode(".png", (mask01 > 0).astype(np.uint8) * 255)
    return buf.tobytes()
