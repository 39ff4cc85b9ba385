from data.tfds.coverage.coverage import Coverage  # noqa: F401 - registers the builder
