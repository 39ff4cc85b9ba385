from data.tfds.cocoglide.cocoglide import Cocoglide  # noqa: F401 - registers the builder
