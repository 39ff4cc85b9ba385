from data.tfds.misd.misd import Misd  # noqa: F401 - registers the builder
