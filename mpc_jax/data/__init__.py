"""Data: decoding (`io`), random-access sources (`sources`), `config.data` and its defaults (`config`), grain
transforms and pipelines (`transforms`, `pipeline`), synthetic forgeries (`synthetic`), ArrayRecord shards
(`arrayrecord`) and the public releases' folder layouts (`layouts`).

Submodules load lazily (`pipeline` pulls in grain/jax; `io` and `synthetic` do not). Main entry points:
  io.read_image(path) -> uint8 [H, W, 3];  io.read_mask(path, expected_hw=None) -> uint8 [H, W] {0,1}
  sources.source_from_spec(spec, on_bad_example='raise') -> source ({'image', 'mask', 'path'} records)
  pipeline.make_train_iterator(config_data, ...); pipeline.make_eval_iterator(config_data, ...)
  config.DataConfig / default_data_config() / check_data_config(cfg)
"""

import importlib

_SUBMODULES = ("io", "sources", "config", "transforms", "pipeline", "synthetic", "arrayrecord", "layouts")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
