"""Moved to `data/tfds/casia_v2`; this import path keeps working."""

from data.tfds.casia_v2 import CasiaV2  # noqa: F401 - registers the builder
