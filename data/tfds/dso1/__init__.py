from data.tfds.dso1.dso1 import Dso1  # noqa: F401 - registers the builder
