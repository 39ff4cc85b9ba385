from data.tfds.tamp_coco.tamp_coco import TampCoco  # noqa: F401 - registers the builder
