"""Moved to `data/tfds/columbia`; this import path keeps working."""

from data.tfds.columbia import Columbia  # noqa: F401 - registers the builder
