from data.tfds.korus.korus import Korus  # noqa: F401 - registers the builder
