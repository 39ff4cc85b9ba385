from data.tfds.imd2020.imd2020 import Imd2020  # noqa: F401 - registers the builder
