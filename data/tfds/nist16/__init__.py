from data.tfds.nist16.nist16 import Nist16  # noqa: F401 - registers the builder
