"""TensorBoard event files without TensorFlow, for clu's `metric_writers`.

`clu.metric_writers` imports its TensorFlow-backed `SummaryWriter` at package import. When
TensorFlow is not installed, `install()` registers this module's `SummaryWriter` (same interface,
written with the `tensorboard` package's event-file writer and protos) under that name first, so
`metric_writers.create_default_writer(workdir)` still writes TensorBoard event files plus the log;
`create_default_writer` here does both steps.
With TensorFlow installed, clu's own writer is used and this module does nothing.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
import types

import numpy as np


class SummaryWriter:
  """clu `MetricWriter` API: scalars, images, texts, histograms (as scalars' mean), hparams."""

  def __init__(self, logdir: str):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    self._writer = EventFileWriter(str(logdir))

  def _add(self, step, values):
    from tensorboard.compat.proto import event_pb2, summary_pb2

    summary = summary_pb2.Summary(value=values)
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: float(np.mean(v)) for k, v in values.items()})

  def write_scalars(self, step, scalars):
    from tensorboard.compat.proto import summary_pb2

    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

  def write_images(self, step, images):
    from PIL import Image
    from tensorboard.compat.proto import summary_pb2

    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      if batch.ndim == 3:
        batch = batch[None]
      for i, img in enumerate(batch):
        if img.dtype != np.uint8:
          img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        if img.shape[-1] == 1:
          img = img[..., 0]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        h, w = img.shape[:2]
        values.append(
          summary_pb2.Summary.Value(
            tag=f"{tag}/image/{i}" if len(batch) > 1 else tag,
            image=summary_pb2.Summary.Image(
              height=h, width=w, colorspace=img.ndim == 3 and 3 or 1, encoded_image_string=buf.getvalue()
            ),
          )
        )
    self._add(step, values)

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2

    values = []
    for tag, text in texts.items():
      tensor = tensor_pb2.TensorProto(
        dtype=7, string_val=[str(text).encode()], tensor_shape=tensor_shape_pb2.TensorShapeProto()
      )
      meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
      )
      values.append(summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor))
    self._add(step, values)

  def write_histograms(self, step, arrays, num_buckets=None):
    del num_buckets
    self.write_scalars(step, {f"{k}/mean": float(np.mean(v)) for k, v in arrays.items()})

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams):
    self.write_texts(0, {"hparams": "\n".join(f"{k}: {v}" for k, v in sorted(hparams.items()))})

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def install() -> None:
  """Registers the fallback as `clu.metric_writers.summary_writer` when TensorFlow is absent."""
  name = "clu.metric_writers.summary_writer"
  if name in sys.modules or importlib.util.find_spec("tensorflow") is not None:
    return
  module = types.ModuleType(name)
  module.SummaryWriter = SummaryWriter
  sys.modules[name] = module


def create_default_writer(logdir, just_logging: bool = False):
  """clu's default metric writer (the log plus TensorBoard event files in `logdir`), with the
  fallback above installed first where TensorFlow is absent."""
  install()
  from clu import metric_writers

  return metric_writers.create_default_writer(str(logdir), just_logging=just_logging)
