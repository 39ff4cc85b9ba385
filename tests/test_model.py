"""The HRFormer/MPC model: any input size, drop path, precision, depth-wise forms, checkpoints, remat."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train_testlib import TEST_XLA_FLAGS, timeout_s
from mpc_jax.checkpoint import load_model, save_model
from mpc_jax.models import HRFORMER_CONFIGS, build_mpc, get_hrformer_config, output_size
from mpc_jax.models import layers

# A very small config on the same code path: 3 windows of 5 so odd sizes need padding.
MICRO = copy.deepcopy(HRFORMER_CONFIGS["hrt_tiny"])
MICRO["STAGE1"]["NUM_CHANNELS"] = [8]
for _name, _n in (("STAGE2", 2), ("STAGE3", 3), ("STAGE4", 4)):
  MICRO[_name]["NUM_CHANNELS"] = [8, 16, 32, 64][:_n]
  MICRO[_name]["NUM_WINDOW_SIZES"] = [5] * _n
  MICRO[_name]["NUM_MODULES"] = 1


# The eval-mode forward tests share this image size, so they share one compiled program.
ODD_HW = (45, 71)


def rel_err(got, ref):
  return float(np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref))


@nnx.jit
def _forward(model, images):
  """`(four maps, logits)`: `model.features` and `model(images)` from one backbone pass."""
  feats = model.features(images)
  return feats, model.head(model.fuse(feats))


def test_any_input_size():
  """Windows of 5 at 45x71 (scales 12x18, 6x9, 3x5, 2x3) pad every branch; the odd-size parity
  test checks the values at two other odd sizes."""
  model = build_mpc(MICRO, seed=1)
  model.eval()
  images = jax.random.uniform(jax.random.key(0), (1, *ODD_HW, 3))
  feats, logits = _forward(model, images)
  for s in range(4):
    assert feats[s].shape == (1, *output_size(*ODD_HW, s), 256)
  assert logits.shape == (1, *output_size(*ODD_HW, 0), 1)
  assert all(bool(jnp.isfinite(f).all()) for f in feats)


def test_drop_path_views_differ_in_train_mode_only():
  """Two consecutive train-mode passes (the stage-1 step's two views) draw different drop-path
  masks from the advancing RNG stream; eval mode gives equal passes, and at rate 0 nothing random is
  left in train mode."""
  images = jax.random.uniform(jax.random.key(1), (1, *ODD_HW, 3))

  @nnx.jit
  def one_view(model, images):
    return model.features(images)[0]

  model = build_mpc(MICRO, seed=0)
  model.train()
  a, b, c = (one_view(model, images) for _ in range(3))
  assert float(jnp.abs(a - b).max()) > 1e-3 and float(jnp.abs(b - c).max()) > 1e-3
  model.eval()
  np.testing.assert_array_equal(
    np.asarray(_forward(model, images)[1]), np.asarray(_forward(model, images)[1])
  )

  no_drop = build_mpc(MICRO, seed=0, drop_path_rate=0.0)
  no_drop.train()
  model.train()
  assert _draws_random_bits(model, images) and not _draws_random_bits(no_drop, images)


def _jaxpr_text(model, images):
  """The jaxpr of `model(images)` as text, traced without compiling or running it."""
  graphdef, state = nnx.split(model)
  return str(jax.make_jaxpr(lambda st, x: nnx.merge(graphdef, st)(x))(state, images))


def _draws_random_bits(model, images):
  """Whether the traced model draws random numbers (a drop-path mask or anything else)."""
  jaxpr = _jaxpr_text(model, images)
  return "random_bits" in jaxpr or "threefry" in jaxpr


def test_bfloat16_compute_keeps_float32_params():
  f32 = build_mpc(MICRO, seed=3)
  bf16 = build_mpc(MICRO, seed=3, dtype="bfloat16")
  for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
    assert leaf.dtype == jnp.float32
  f32.eval()
  bf16.eval()
  images = jax.random.uniform(jax.random.key(2), (1, *ODD_HW, 3))
  (fa, _), (fb, lb) = _forward(f32, images), _forward(bf16, images)
  assert fb[0].dtype == jnp.bfloat16 and lb.dtype == jnp.float32
  assert rel_err(fb[0].astype(jnp.float32), np.asarray(fa[0], np.float64)) < 0.05


def test_save_and_load_model_gives_an_identical_model(tmp_path):
  """The restored model has the same structure and static attributes (head, mode, depth-wise form,
  dtype: the graph definition) and bit-identical arrays, so it computes the same outputs."""
  model = build_mpc(MICRO, head="casiav2", seed=5)
  for bn in (m for _, m in nnx.iter_modules(model) if isinstance(m, layers.BatchNorm)):
    bn.mean.set_value(bn.mean[...] + 0.5)  # statistics that differ from a fresh build's
    bn.num_batches_tracked.set_value(bn.num_batches_tracked[...] + 3)
  model.eval()
  save_model(model, tmp_path / "m")
  save_model(model, tmp_path / "m")  # overwriting an existing model works
  restored = load_model(tmp_path / "m")
  assert restored.head.variant == "casiav2"
  (graph, arrays), (graph_back, arrays_back) = nnx.split(model), nnx.split(restored)
  assert graph_back == graph
  flat, flat_back = nnx.to_flat_state(arrays), nnx.to_flat_state(arrays_back)
  assert [p for p, _ in flat_back] == [p for p, _ in flat]
  for (path, a), (_, b) in zip(flat, flat_back):
    if type(a) is not nnx.RngKey:  # the drop-path stream's key is not saved (eval mode never draws)
      np.testing.assert_array_equal(np.asarray(b[...]), np.asarray(a[...]), err_msg=str(path), strict=True)


def test_a_loaded_model_is_built_once_per_machine(tmp_path, programs_cache, monkeypatch):
  """`load_model` keeps the eval-mode model's structure in the compilation cache: a later load (of any
  folder holding that configuration) builds no modules and gives the saved model all the same, with
  arrays of its own; a damaged file is built again."""
  from mpc_jax import checkpoint

  model = build_mpc(MICRO, seed=5)
  model.eval()
  save_model(model, tmp_path / "m")
  first = load_model(tmp_path / "m")
  assert len(list(programs_cache.glob("*.pkl"))) == 1
  built = []
  build = checkpoint.build_mpc
  monkeypatch.setattr(checkpoint, "build_mpc", lambda *a, **k: built.append(a) or build(*a, **k))
  (graph, arrays) = nnx.split(model)
  want = [np.asarray(v[...]) for _, v in nnx.to_flat_state(arrays) if type(v) is not nnx.RngKey]
  for damaged in (False, True):
    if damaged:
      for f in programs_cache.glob("*.pkl"):
        f.write_bytes(f.read_bytes()[:100])
    again = load_model(tmp_path / "m")
    assert len(built) == damaged
    graph_again, arrays_again = nnx.split(again)
    assert graph_again == graph
    got = [np.asarray(v[...]) for _, v in nnx.to_flat_state(arrays_again) if type(v) is not nnx.RngKey]
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b, strict=True)
  bias = first.head.classifier[-1].bias
  bias.set_value(bias[...] + 1.0)
  assert not np.array_equal(np.asarray(bias[...]), np.asarray(again.head.classifier[-1].bias[...]))
  save_model(build_mpc(MICRO, head="casiav2", seed=5), tmp_path / "other")  # another configuration
  assert load_model(tmp_path / "other").head.variant == "casiav2"


def test_build_without_random_weights_has_the_same_structure():
  """`random_init=False` (what loading uses) gives the same graph and shapes, and draws nothing: every
  weight is a constant (zeros where a random draw would be, the norms' ones)."""
  random, empty = build_mpc(MICRO, seed=0), build_mpc(MICRO, seed=0, random_init=False)
  (graph, arrays), (graph_empty, arrays_empty) = nnx.split(random), nnx.split(empty)
  assert graph_empty == graph
  drawn = lambda model: sum(np.ptp(np.asarray(x)) > 0 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert drawn(empty) == 0 and drawn(random) > 50
  shapes = lambda st: [(p, np.shape(v[...])) for p, v in nnx.to_flat_state(st) if type(v) is not nnx.RngKey]
  assert shapes(arrays_empty) == shapes(arrays)


def test_load_model_from_workdir_prefers_best(tmp_path):
  save_model(build_mpc(MICRO, head="catnet", seed=0), tmp_path / "model_latest")
  save_model(build_mpc(MICRO, head="casiav2", seed=0), tmp_path / "model_best")
  assert load_model(tmp_path).head.variant == "casiav2"
  with pytest.raises(FileNotFoundError, match="no mpc-jax model"):
    load_model(tmp_path / "nothing")


@pytest.mark.parametrize(
  "field, value, message",
  [
    (("STAGE2", "NUM_HEADS"), [3, 2], "not divisible"),
    (("STAGE3", "NUM_CHANNELS"), [8, 16], "NUM_CHANNELS has 2 entries"),
    (("STAGE4", "BLOCK"), "BASIC", "STAGE4.BLOCK"),
    (("DROP_PATH_RATE",), 1.5, "DROP_PATH_RATE"),
  ],
)
def test_bad_config_names_the_field(field, value, message):
  cfg = copy.deepcopy(MICRO)
  target = cfg
  for key in field[:-1]:
    target = target[key]
  target[field[-1]] = value
  with pytest.raises(ValueError, match=message):
    get_hrformer_config(cfg)
  with pytest.raises(ValueError, match="unknown hrformer_config"):
    get_hrformer_config("hrt_huge")
  with pytest.raises(ValueError, match="dtype"):
    build_mpc(MICRO, dtype="float16")


_REMAT_SCRIPT = textwrap.dedent("""
    import json, sys
    from mpc_jax import distributed
    assert distributed.keep_remat_barriers_on_cpu()  # before the backends exist
    import jax, jax.numpy as jnp
    from flax import nnx
    from mpc_jax.models import build_mpc
    config = json.loads(sys.argv[1])
    images = jax.random.uniform(jax.random.key(0), (2, 128, 128, 3))
    runs = {}
    for remat in (False, True):
        graphdef, params, rest = nnx.split(build_mpc(config, seed=0, remat=remat), nnx.Param, ...)

        def loss(params, rest, images):
            model = nnx.merge(graphdef, params, rest, copy=True)
            value = sum(jnp.sum(jnp.sin(3.0 * f)) for f in model.features(images))
            return value, nnx.state(model, nnx.Not(nnx.Param))

        compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params, rest, images).compile()
        (value, new_rest), grads = compiled(params, rest, images)
        leaves = lambda t: [x for x in jax.tree.leaves(t) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
        runs[remat] = (float(value), leaves(grads), leaves(new_rest), compiled.memory_analysis().temp_size_in_bytes)
    (v0, g0, r0, m0), (v1, g1, r1, m1) = runs[False], runs[True]
    diff = lambda a, b: max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
                            for x, y in zip(a, b))
    scale = max(float(jnp.max(jnp.abs(x))) for x in g0)
    print(json.dumps(dict(values=[v0, v1], grad_diff=diff(g0, g1), grad_scale=scale, rest_diff=diff(r0, r1),
                          n_rest=len(r0), temp=[m0, m1])))
""")


@pytest.mark.slow
def test_remat_gives_same_values_and_gradients_with_less_memory():
  """Per-module remat changes neither the loss, the gradients, nor the BatchNorm statistics and
  drop-path RNG state it leaves behind, and lowers XLA's temporary memory. Runs in a fresh
  process, where `keep_remat_barriers_on_cpu` can still set XLA_FLAGS (this one has its backends)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS}
  out = subprocess.run(
    [sys.executable, "-c", _REMAT_SCRIPT, json.dumps(MICRO)],
    capture_output=True,
    text=True,
    timeout=timeout_s(900),
    env=env,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["values"][0] == pytest.approx(res["values"][1], rel=1e-6)
  assert res["grad_diff"] <= 1e-5 * res["grad_scale"], res
  assert res["n_rest"] > 10 and res["rest_diff"] <= 1e-5, res
  plain, remat = res["temp"]
  assert remat < 0.7 * plain, f"remat should cut XLA's temporaries: {remat} vs {plain} bytes"


@pytest.mark.parametrize(
  "hw,stride,padding", [((9, 13), 1, 1), ((16, 16), 2, 1), ((11, 7), 2, 0), ((6, 10), 1, 0), ((2, 5), 1, 1)]
)
def test_shifted_depthwise_conv_matches_xla_grouped_conv(hw, stride, padding):
  """Values and gradients (input and kernel) of the shifted form equal XLA's grouped convolution."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, *hw, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 6)), jnp.float32)

  def grouped(x, k):
    return layers.grouped_conv(x, k, stride, padding, groups=6)

  def shifted(x, k):
    return layers.depthwise_conv(x, k, stride, padding)

  want, got = grouped(x, kernel), shifted(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  ct = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  for g_want, g_got in zip(jax.vjp(grouped, x, kernel)[1](ct), jax.vjp(shifted, x, kernel)[1](ct)):
    np.testing.assert_allclose(g_got, g_want, rtol=1e-4, atol=1e-4)
  half = layers.depthwise_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), stride, padding)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), want, rtol=0.05, atol=0.05)


def _grouped_convs(model, images):
  """Number of grouped (depth-wise) XLA convolutions in the traced forward."""
  import re

  return sum(int(g) > 1 for g in re.findall(r"feature_group_count=(\d+)", _jaxpr_text(model, images)))


def test_depthwise_choice_is_the_models_and_auto_follows_backend():
  """Both depth-wise forms give the same output; 'auto' takes the shifted form on the CPU, in train
  and eval mode; a bad setting names the field."""
  images = jax.random.uniform(jax.random.key(4), (1, *ODD_HW, 3))
  auto = build_mpc(MICRO, seed=0)
  assert jax.default_backend() == "cpu"
  assert _grouped_convs(auto, images) == 0  # train mode on the CPU: shifted multiply-adds
  auto.eval()
  assert _grouped_convs(auto, images) == 0
  shifted = np.asarray(_forward(auto, images)[1])
  auto.set_attributes(depthwise="xla")
  assert _grouped_convs(auto, images) > 0
  np.testing.assert_allclose(shifted, np.asarray(_forward(auto, images)[1]), rtol=1e-5, atol=1e-6)
  assert _grouped_convs(build_mpc(MICRO, seed=0, depthwise="shift"), images) == 0  # also in train mode
  with pytest.raises(ValueError, match="depthwise"):
    build_mpc(MICRO, depthwise="fast")


def test_transformer_block_layernorms_match_torch_semantics_at_small_variance():
  """The blocks' norm1/norm2 are `nn.LayerNorm(eps=1e-6)` (biased variance, eps inside the root):
  a numpy restatement on tokens whose variance (1e-6) is comparable to eps."""
  block = build_mpc(MICRO, seed=0).backbone.stage2[0].branches[0][0]
  rng = np.random.default_rng(0)
  x = (1e-3 * rng.standard_normal((2, 3, 5, 8))).astype(np.float32)
  for norm in (block.norm1, block.norm2):
    w = rng.normal(1.0, 0.1, 8).astype(np.float32)
    b = rng.normal(0.0, 0.1, 8).astype(np.float32)
    norm.scale.set_value(jnp.asarray(w))
    norm.bias.set_value(jnp.asarray(b))
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(-1, keepdims=True)
    want = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-6) * w + b
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_pieces_forward_matches_whole_and_shares_programs(monkeypatch):
  """Run piece by piece (what the Predictor's 'pieces' does), the model gives the whole program's
  logits; the two stage-3 modules (same structure, different drop-path rates) share their four pieces
  (three branches, the exchange), and the branches of stage 2 (whose first blocks have no drop path)
  and stage 4's first three branches share stage 3's programs."""
  from mpc_jax.models import pieces
  from mpc_jax.predict import _piecewise_forward

  config = copy.deepcopy(MICRO)
  config["STAGE3"]["NUM_MODULES"] = 2
  model = build_mpc(config, seed=3)
  model.eval()
  images = jax.random.uniform(jax.random.key(4), (1, *ODD_HW, 3))
  want = np.asarray(jax.nn.sigmoid(_forward(model, images)[1][..., 0]))
  calls = []
  monkeypatch.setattr(pieces, "_PROGRAMS", {})
  real = pieces.call_piece
  monkeypatch.setattr(pieces, "call_piece", lambda fn, m, *a: calls.append(m) or real(fn, m, *a))
  for name in ("mpc_jax.models.hrformer", "mpc_jax.models.mpc"):
    monkeypatch.setattr(f"{name}.call_piece", pieces.call_piece)
  got = np.asarray(_piecewise_forward(model)(images))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  stage3 = list(model.backbone.stage3)
  assert (
    len(stage3) == 2 and stage3[0].branches[0][0].drop_path.rate != stage3[1].branches[0][0].drop_path.rate
  )
  assert isinstance(model.backbone.stage2[0].branches[0][0].drop_path, layers.Identity)
  assert len(calls) > 10 and len(pieces._PROGRAMS) == len(calls) - 4 - 3 - 2
  assert not model.pieces and not model.backbone.pieces  # the caller's model is left as it was


def test_pieces_compile_with_the_quick_options_and_the_whole_forward_without(monkeypatch):
  """On the CPU the pieces are compiled with `QUICK_CPU_OPTIONS` and the whole forward with XLA's
  defaults: an option XLA does not know fails the pieces only."""
  from mpc_jax.models import pieces
  from mpc_jax.predict import Predictor

  assert jax.default_backend() == "cpu"
  model = build_mpc(MICRO, seed=3)
  images = np.asarray(jax.random.uniform(jax.random.key(4), (1, *ODD_HW, 3)))
  monkeypatch.setattr(pieces, "QUICK_CPU_OPTIONS", {"xla_no_such_option_for_the_test": 1})
  for programs in ("whole", "pieces"):
    monkeypatch.setattr(pieces, "_PROGRAMS", {})
    monkeypatch.setattr(pieces, "_SPLITS", {})
    predictor = Predictor(model, batch_size=1, programs=programs)
    if programs == "whole":
      assert predictor(images).shape[0] == 1
    else:
      with pytest.raises(Exception, match="xla_no_such_option_for_the_test"):
        predictor(images)


@pytest.mark.parametrize("programs", ["pieces", "whole"])
def test_programs_are_stored_and_a_later_process_runs_them_without_tracing(
  programs, programs_cache, monkeypatch
):
  """The forward's programs (its pieces, or the whole model) are kept beside JAX's cache; with the
  in-memory programs gone (a new process), the same model runs them without tracing and gives the
  same values. A Predictor made after the weights change runs the new weights."""
  from jax import monitoring

  from mpc_jax.models import pieces
  from mpc_jax.predict import Predictor

  traced = []
  listener = lambda event, secs, **kw: (
    traced.append(kw.get("fun_name")) if event.endswith("trace_duration") else None
  )
  monitoring.register_event_duration_secs_listener(listener)
  try:
    model = build_mpc(MICRO, seed=3)
    model.eval()
    images = np.asarray(jax.random.uniform(jax.random.key(4), (1, *ODD_HW, 3)))
    want = np.asarray(jax.nn.sigmoid(_forward(model, images)[1][..., 0]))
    for attempt in range(2):
      monkeypatch.setattr(pieces, "_PROGRAMS", {})
      monkeypatch.setattr(pieces, "_SPLITS", {})
      traced.clear()
      got = Predictor(model, batch_size=1, programs=programs)(images)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      if attempt == 0:
        assert traced.count("run") == len(pieces._PROGRAMS) == len(list(programs_cache.glob("*.exe")))
        assert len(pieces._PROGRAMS) > (5 if programs == "pieces" else 0)
    assert traced.count("run") == 0, traced
  finally:
    monitoring.unregister_event_duration_listener(listener)
  bias = model.head.classifier[-1].bias
  bias.set_value(bias[...] + 3.0)
  changed = np.asarray(jax.nn.sigmoid(_forward(model, images)[1][..., 0]))
  assert np.abs(changed - want).max() > 0.1
  np.testing.assert_allclose(Predictor(model, 1, programs)(images), changed, rtol=1e-5, atol=1e-6)


def test_build_moves_the_model_to_the_device_once_and_loading_skips_the_zeros(tmp_path):
  """`build_mpc` gives device arrays; `random_init=False` leaves its placeholders on the host (the
  loader replaces them), and a loaded model holds device arrays again."""
  arrays = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
  model = build_mpc(MICRO, seed=0)
  assert all(isinstance(a, jax.Array) for a in arrays(model))
  assert not any(isinstance(a, jax.Array) for a in arrays(build_mpc(MICRO, random_init=False)))
  save_model(model, tmp_path / "m")
  assert all(isinstance(a, jax.Array) for a in arrays(load_model(tmp_path / "m")))


def test_model_folders_of_the_orbax_format_still_load(tmp_path):
  """Models saved before `weights.safetensors` hold an orbax `state/`; they load to the same arrays."""
  import orbax.checkpoint as ocp

  from mpc_jax import checkpoint

  model = build_mpc(MICRO, seed=6)
  save_model(model, tmp_path / "new")
  old = tmp_path / "old"
  old.mkdir()
  (old / "model_config.json").write_text((tmp_path / "new" / "model_config.json").read_text())
  arrays = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, checkpoint._SAVED)))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(old / "state", arrays)
  for path in (tmp_path / "new", old):
    named = lambda m: checkpoint._named_arrays(nnx.to_pure_dict(nnx.state(m, checkpoint._SAVED)))
    back = named(load_model(path))
    for name, a in named(model).items():
      np.testing.assert_array_equal(
        np.asarray(back[name]), np.asarray(a), err_msg=f"{path.name}: {name}", strict=True
      )


def test_bad_weights_files_name_the_file(tmp_path):
  from mpc_jax import checkpoint

  save_model(build_mpc(MICRO, seed=0), tmp_path / "m")
  weights = tmp_path / "m" / checkpoint.WEIGHTS
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=f"{weights}.*not a readable safetensors"):
    load_model(tmp_path / "m")
  save_model(build_mpc(MICRO, head="catnet", seed=0), tmp_path / "m")  # a head with one layer fewer
  config = tmp_path / "m" / "model_config.json"
  config.write_text(json.dumps(dict(json.loads(config.read_text()), head="casiav2")))
  with pytest.raises(ValueError, match=rf"{weights} lacks \d+ of the model's arrays \(first: head/"):
    load_model(tmp_path / "m")
  weights.unlink()
  with pytest.raises(FileNotFoundError, match="no weights.safetensors"):
    load_model(tmp_path / "m")
