from data.tfds.in_the_wild.in_the_wild import InTheWild  # noqa: F401 - registers the builder
