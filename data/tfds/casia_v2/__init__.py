from data.tfds.casia_v2.casia_v2 import CasiaV2  # noqa: F401 - registers the builder
