from data.columbia.columbia import Columbia  # noqa: F401 - registers the builder
