from data.tfds.columbia.columbia import Columbia  # noqa: F401 - registers the builder
