from data.tfds.casia_v1.casia_v1 import CasiaV1  # noqa: F401 - registers the builder
