"""Registers every builder of `data/tfds` (`import data.tfds.all`)."""

import importlib

from data.tfds import BUILDERS

for _name in BUILDERS:
  importlib.import_module(f"data.tfds.{_name}")
