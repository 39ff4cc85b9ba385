"""HRFormer (High-Resolution Transformer) backbone in Flax NNX, NHWC.

Configured like the reference's yacs configs (`STAGE1..STAGE4` with `NUM_MODULES`, `NUM_BRANCHES`,
`NUM_BLOCKS`, `NUM_CHANNELS`, `NUM_HEADS`, `NUM_MLP_RATIOS`, `NUM_WINDOW_SIZES`, `BLOCK`, plus
`DROP_PATH_RATE`). Stage 1 is a stack of bottlenecks; stages 2-4 hold parallel branches of
transformer blocks (windowed multi-head attention with relative position bias, then a depth-wise
conv MLP) joined by multi-resolution fusion. A 1x1 conv + BN + ReLU maps each branch to 256
channels. `HRFormer(images [B, H, W, 3])` returns the four maps `[B, h_s, w_s, 256]` at 1/4, 1/8,
1/16 and 1/32 of the input (ceil division at each stride-2 step), for any H and W.
"""

from __future__ import annotations

import copy
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mpc_jax.models.pieces import apply, call_piece
from mpc_jax.models.layers import (
  Act,
  BatchNorm,
  DropPath,
  Identity,
  Init,
  LayerNorm,
  Linear,
  UpsampleNearest,
  conv,
  gelu,
  resize_bilinear_align_corners,
  run_sequence,
)

OUT_CHANNELS = 256


def _stage(modules, blocks, channels, heads=None, mlp=None, windows=None, block="TRANSFORMER_BLOCK"):
  cfg = {
    "NUM_MODULES": modules,
    "NUM_BRANCHES": len(channels),
    "NUM_BLOCKS": list(blocks),
    "NUM_CHANNELS": list(channels),
    "BLOCK": block,
  }
  if heads is not None:
    cfg.update(NUM_HEADS=list(heads), NUM_MLP_RATIOS=list(mlp), NUM_WINDOW_SIZES=list(windows))
  return cfg


def _preset(c, heads, s3_modules, blocks, window=7, stem_blocks=2, stem_channels=64, drop_path=0.2):
  """A yacs-layout config: branch channels `c` and heads (4 each), MLP ratio 4, one window size."""
  return {
    "DROP_PATH_RATE": drop_path,
    "STAGE1": _stage(1, [stem_blocks], [stem_channels], block="BOTTLENECK"),
    "STAGE2": _stage(1, [blocks] * 2, c[:2], heads[:2], [4] * 2, [window] * 2),
    "STAGE3": _stage(s3_modules, [blocks] * 3, c[:3], heads[:3], [4] * 3, [window] * 3),
    "STAGE4": _stage(2, [blocks] * 4, c[:4], heads[:4], [4] * 4, [window] * 4),
  }


HRFORMER_CONFIGS = {
  "hrt_small": _preset([32, 64, 128, 256], [1, 2, 4, 8], 4, 2),
  "hrt_base": _preset([78, 156, 312, 624], [2, 4, 8, 16], 4, 2),
  "hrt_base_win13": _preset([78, 156, 312, 624], [2, 4, 8, 16], 4, 2, window=13),
  "hrt_base_win15": _preset([78, 156, 312, 624], [2, 4, 8, 16], 4, 2, window=15),
  # The configuration of `shared/fixtures/parity_tiny`: same code path, ~1.7 M parameters.
  "hrt_tiny": _preset([16, 32, 64, 128], [1, 2, 4, 8], 1, 1, stem_blocks=1, stem_channels=16),
}


def get_hrformer_config(config=None) -> dict:
  """A validated deep copy of a preset name or a yacs-layout dict (`None` means `hrt_base`)."""
  if config is None:
    config = "hrt_base"
  if isinstance(config, str):
    if config not in HRFORMER_CONFIGS:
      raise ValueError(f"unknown hrformer_config {config!r}; presets: {sorted(HRFORMER_CONFIGS)}")
    config = HRFORMER_CONFIGS[config]
  config = copy.deepcopy({k: (dict(v) if hasattr(v, "keys") else v) for k, v in dict(config).items()})
  validate_hrformer_config(config)
  return config


def validate_hrformer_config(cfg: dict) -> None:
  """Raises ValueError naming the field when a yacs-layout config cannot build a model."""
  for name in ("STAGE1", "STAGE2", "STAGE3", "STAGE4"):
    if name not in cfg:
      raise ValueError(f"hrformer_config is missing {name}")
  rate = cfg.get("DROP_PATH_RATE", 0.0)
  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"hrformer_config.DROP_PATH_RATE must be in [0, 1), got {rate}")
  s1 = cfg["STAGE1"]
  if s1.get("BLOCK") != "BOTTLENECK" or s1.get("NUM_BRANCHES", 1) != 1:
    raise ValueError("hrformer_config.STAGE1 must be a single BOTTLENECK branch, as the reference")
  for i, name in enumerate(("STAGE2", "STAGE3", "STAGE4"), start=2):
    s = cfg[name]
    if s.get("BLOCK") != "TRANSFORMER_BLOCK":
      raise ValueError(f"hrformer_config.{name}.BLOCK must be TRANSFORMER_BLOCK, got {s.get('BLOCK')!r}")
    nb = s["NUM_BRANCHES"]
    if nb != i:
      raise ValueError(f"hrformer_config.{name}.NUM_BRANCHES must be {i}, got {nb}")
    for field in ("NUM_BLOCKS", "NUM_CHANNELS", "NUM_HEADS", "NUM_MLP_RATIOS", "NUM_WINDOW_SIZES"):
      if len(s[field]) != nb:
        raise ValueError(f"hrformer_config.{name}.{field} has {len(s[field])} entries, NUM_BRANCHES is {nb}")
    for c, h in zip(s["NUM_CHANNELS"], s["NUM_HEADS"]):
      if c % h:
        raise ValueError(f"hrformer_config.{name}: NUM_CHANNELS {c} is not divisible by NUM_HEADS {h}")
    if s["NUM_MODULES"] < 1 or min(s["NUM_BLOCKS"]) < 1:
      raise ValueError(f"hrformer_config.{name}: NUM_MODULES and NUM_BLOCKS must be >= 1")
    if max(s["NUM_BLOCKS"]) > s["NUM_BLOCKS"][0]:
      raise ValueError(
        f"hrformer_config.{name}.NUM_BLOCKS: branch 0 must have the most blocks "
        "(the reference spaces drop-path rates by branch 0)"
      )


def _conv_bn(cin, cout, k, init, dtype, stride=1, pad=0, groups=1, relu=True, eps=1e-5, momentum=0.1):
  layers = [
    conv(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=False, dtype=dtype, init=init),
    BatchNorm(cout, eps=eps, momentum=momentum),
  ]
  if relu:
    layers.append(Act("relu"))
  return nnx.List(layers)


class Bottleneck(nnx.Module, pytree=False):
  """ResNet bottleneck (1x1, 3x3, 1x1 x4) with an optional 1x1 projection shortcut."""

  def __init__(self, cin, planes, *, init, dtype):
    self.conv1 = conv(cin, planes, 1, bias=False, dtype=dtype, init=init)
    self.bn1 = BatchNorm(planes)
    self.conv2 = conv(planes, planes, 3, padding=1, bias=False, dtype=dtype, init=init)
    self.bn2 = BatchNorm(planes)
    self.conv3 = conv(planes, planes * 4, 1, bias=False, dtype=dtype, init=init)
    self.bn3 = BatchNorm(planes * 4)
    self.downsample = _conv_bn(cin, planes * 4, 1, init, dtype, relu=False) if cin != planes * 4 else None

  def __call__(self, x):
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else run_sequence(self.downsample, x)
    return jax.nn.relu(out + shortcut)


def relative_position_index(window: int) -> np.ndarray:
  """`[w*w, w*w]` int index into the `(2w-1)^2` bias table (row-major window positions)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int64)


def _projections(x, linears):
  """`[lin(x) for lin in linears]` from one matrix product (the kernels side by side), which runs faster
  forward and backward than one product per `Linear` on the CPU. `x [..., cin]`."""
  dtype = linears[0].dtype
  kernel = jnp.concatenate([lin.kernel[...] for lin in linears], axis=1).astype(dtype)
  bias = jnp.concatenate([lin.bias[...] for lin in linears]).astype(dtype)
  y = x.astype(dtype) @ kernel + bias
  return jnp.split(y, len(linears), axis=-1)


class WindowAttention(nnx.Module, pytree=False):
  """Multi-head self-attention inside `window x window` tokens with a relative position bias.

  Called on `[N, window*window, C]` (one row per window); q is scaled after its bias.
  """

  def __init__(self, dim, num_heads, window, *, init, dtype):
    lin = lambda: Linear(dim, dim, init=init, dtype=dtype)
    self.k_proj, self.v_proj, self.q_proj, self.out_proj = lin(), lin(), lin(), lin()
    self.relative_position_bias_table = nnx.Param(init.trunc_normal(((2 * window - 1) ** 2, num_heads), 0.02))
    self.num_heads = num_heads
    self.window = window

  def __call__(self, x):
    n, t, c = x.shape
    h, d = self.num_heads, c // self.num_heads
    q, k, v = _projections(x, (self.q_proj, self.k_proj, self.v_proj))
    q = (q * (d**-0.5)).reshape(n, t, h, d)
    k, v = k.reshape(n, t, h, d), v.reshape(n, t, h, d)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32)
    index = relative_position_index(self.window).reshape(-1)
    bias = self.relative_position_bias_table[...][index].reshape(t, t, h).transpose(2, 0, 1)
    weights = jax.nn.softmax(logits + bias[None], axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, c)
    return self.out_proj(out)


class WindowAttentionBlock(nnx.Module, pytree=False):
  """Pads `[B, H, W, C]` (centred, zeros) to the window grid, attends per window, crops back.

  The padded zeros take part in attention unmasked, exactly as the reference.
  """

  def __init__(self, dim, num_heads, window, *, init, dtype):
    self.attn = WindowAttention(dim, num_heads, window, init=init, dtype=dtype)
    self.window = window

  def __call__(self, x):
    b, h, w, c = x.shape
    s = self.window
    ph, pw = -h % s, -w % s
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    hp, wp = h + ph, w + pw
    win = xp.reshape(b, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
    out = self.attn(win)
    out = out.reshape(b, hp // s, wp // s, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    return out[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


class MlpDWBN(nnx.Module, pytree=False):
  """1x1 conv, BN, GELU, depth-wise 3x3, BN, GELU, 1x1 conv, BN, GELU."""

  def __init__(self, dim, hidden, out, *, init, dtype):
    self.fc1 = conv(dim, hidden, 1, dtype=dtype, init=init)
    self.norm1 = BatchNorm(hidden)
    self.dw3x3 = conv(hidden, hidden, 3, padding=1, groups=hidden, dtype=dtype, init=init)
    self.norm2 = BatchNorm(hidden)
    self.fc2 = conv(hidden, out, 1, dtype=dtype, init=init)
    self.norm3 = BatchNorm(out)

  def __call__(self, x):
    x = gelu(self.norm1(self.fc1(x)))
    x = gelu(self.norm2(self.dw3x3(x)))
    return gelu(self.norm3(self.fc2(x)))


class TransformerBlock(nnx.Module, pytree=False):
  """`x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))` on `[B, H, W, C]`."""

  def __init__(self, dim, num_heads, window, mlp_ratio, drop_path, *, init, dtype):
    self.attn = WindowAttentionBlock(dim, num_heads, window, init=init, dtype=dtype)
    self.norm1 = LayerNorm(dim)
    self.norm2 = LayerNorm(dim)
    self.mlp = MlpDWBN(dim, int(dim * mlp_ratio), dim, init=init, dtype=dtype)
    self.drop_path = DropPath(drop_path, init.rngs) if drop_path > 0.0 else Identity()

  def __call__(self, x):
    x = x + self.drop_path(self.attn(self.norm1(x)))
    return x + self.drop_path(self.mlp(self.norm2(x)))


class HRModule(nnx.Module, pytree=False):
  """Parallel branches of transformer blocks, then every branch fuses all the others."""

  def __init__(self, stage_cfg, drop_paths, *, init, dtype):
    ch = stage_cfg["NUM_CHANNELS"]
    nb = stage_cfg["NUM_BRANCHES"]
    self.branches = nnx.List(
      [
        nnx.List(
          [
            TransformerBlock(
              ch[i],
              stage_cfg["NUM_HEADS"][i],
              stage_cfg["NUM_WINDOW_SIZES"][i],
              stage_cfg["NUM_MLP_RATIOS"][i],
              drop_paths[k],
              init=init,
              dtype=dtype,
            )
            for k in range(stage_cfg["NUM_BLOCKS"][i])
          ]
        )
        for i in range(nb)
      ]
    )
    fuse = []
    for i in range(nb if nb > 1 else 0):
      row = []
      for j in range(nb):
        if j > i:
          row.append(
            nnx.List([*_conv_bn(ch[j], ch[i], 1, init, dtype, relu=False), UpsampleNearest(2 ** (j - i))])
          )
        elif j == i:
          row.append(Identity())
        else:
          steps = []
          for k in range(i - j):
            last = k == i - j - 1
            cout = ch[i] if last else ch[j]
            step = [
              *_conv_bn(ch[j], ch[j], 3, init, dtype, stride=2, pad=1, groups=ch[j], relu=False),
              *_conv_bn(ch[j], cout, 1, init, dtype, relu=not last),
            ]
            steps.append(nnx.List(step))
          row.append(nnx.List(steps))
      fuse.append(nnx.List(row))
    self.fuse_layers = nnx.List(fuse)

  def __call__(self, xs):
    xs = [run_sequence(branch, x) for branch, x in zip(self.branches, xs)]
    return fuse_branches(self.fuse_layers, xs) if len(xs) > 1 else xs


def fuse_branches(fuse_layers, xs):
  """An HRModule's exchange: branch `i`'s output is the ReLU of the sum of every branch resized to it."""
  out = []
  for i, row in enumerate(fuse_layers):
    y = xs[0] if i == 0 else _apply_fuse(row[0], xs[0])
    for j in range(1, len(xs)):
      if j == i:
        y = y + xs[j]
      elif j > i:
        y = y + resize_bilinear_align_corners(run_sequence(row[j], xs[j]), xs[i].shape[1:3])
      else:
        y = y + _apply_fuse(row[j], xs[j])
    out.append(jax.nn.relu(y))
  return out


def _apply_fuse(steps, x):
  for step in steps:
    x = run_sequence(step, x)
  return x


def _transition(prev, cur, init, dtype):
  layers = []
  for i, c in enumerate(cur):
    if i < len(prev):
      layers.append(_conv_bn(prev[i], c, 3, init, dtype, pad=1) if prev[i] != c else Identity())
    else:
      steps = []
      for j in range(i + 1 - len(prev)):
        cout = c if j == i - len(prev) else prev[-1]
        steps.append(_conv_bn(prev[-1], cout, 3, init, dtype, stride=2, pad=1))
      layers.append(nnx.List(steps))
  return nnx.List(layers)


def _run_transition(layer, x):
  if isinstance(layer[0], nnx.List):  # a chain of stride-2 steps to a new branch
    return _apply_fuse(layer, x)
  return run_sequence(layer, x)


# A module call whose activations are recomputed in the backward pass instead of stored: only its
# input is kept. State updates (BatchNorm statistics, the drop-path RNG count) come out as usual.
_remat_call = nnx.remat(apply)


class _Config(dict):
  """The yacs-layout config dict, hashable, as the attributes of a graph definition must be."""

  def __hash__(self):
    return hash(json.dumps(self, sort_keys=True))


class HRFormer(nnx.Module, pytree=False):
  """The backbone: stem (two stride-2 3x3 convs), stage 1 bottlenecks, stages 2-4, 1x1 heads.

  `__call__(images [B, H, W, 3]) -> [4 x [B, h_s, w_s, 256]]`, before any L2 normalisation.
  With `remat`, every stage-1 bottleneck and every HRModule is rematerialised (`nnx.remat`): the
  backward pass keeps only their inputs and recomputes the rest, one module at a time; the values
  and gradients are unchanged.
  """

  def __init__(self, config=None, *, init: Init, dtype=jnp.float32, drop_path_rate=None, remat=False):
    cfg = get_hrformer_config(config)
    if drop_path_rate is not None:
      cfg["DROP_PATH_RATE"] = float(drop_path_rate)
    self.config = _Config(cfg)
    self.dtype = dtype
    self.remat = bool(remat)
    self.pieces = False  # eval only: jitted module by module (`models.pieces`), set by the Predictor
    self.conv1 = conv(3, 64, 3, stride=2, padding=1, bias=False, dtype=dtype, init=init)
    self.bn1 = BatchNorm(64)
    self.conv2 = conv(64, 64, 3, stride=2, padding=1, bias=False, dtype=dtype, init=init)
    self.bn2 = BatchNorm(64)

    s1 = cfg["STAGE1"]
    planes = s1["NUM_CHANNELS"][0]
    blocks, cin = [], 64
    for _ in range(s1["NUM_BLOCKS"][0]):
      blocks.append(Bottleneck(cin, planes, init=init, dtype=dtype))
      cin = planes * 4
    self.layer1 = nnx.List(blocks)

    depths = [cfg[s]["NUM_BLOCKS"][0] * cfg[s]["NUM_MODULES"] for s in ("STAGE2", "STAGE3", "STAGE4")]
    dpr = np.linspace(0.0, float(cfg["DROP_PATH_RATE"]), sum(depths), dtype=np.float32).tolist()
    prev, start = [cin], 0
    for n, name in enumerate(("STAGE2", "STAGE3", "STAGE4"), start=1):
      s = cfg[name]
      setattr(self, f"transition{n}", _transition(prev, s["NUM_CHANNELS"], init, dtype))
      rates = dpr[start : start + depths[n - 1]]
      start += depths[n - 1]
      nb0 = s["NUM_BLOCKS"][0]
      setattr(
        self,
        f"stage{n + 1}",
        nnx.List(
          [
            HRModule(s, rates[nb0 * m : nb0 * (m + 1)], init=init, dtype=dtype)
            for m in range(s["NUM_MODULES"])
          ]
        ),
      )
      prev = list(s["NUM_CHANNELS"])
    self.convs = nnx.List(
      [
        nnx.Dict(
          conv=conv(c, OUT_CHANNELS, 1, bias=False, dtype=dtype, init=init),
          bn=BatchNorm(OUT_CHANNELS, eps=1e-3, momentum=0.03),
        )
        for c in prev
      ]
    )

  def __call__(self, images):
    if self.pieces:
      return self._forward(call_piece, images)

    def run(fn, module, x):  # with remat, whole modules are rematerialised
      return _remat_call(module, x) if self.remat and fn is apply else fn(module, x)

    return self._forward(run, images)

  def _forward(self, run, images):
    """The forward with `run(fn, module, x)` applying each stem/bottleneck/transition/HRModule/head."""
    x = run(_stem, self, images)
    for block in self.layer1:
      x = run(apply, block, x)
    ys = [x]
    for transition, stage in (
      (self.transition1, self.stage2),
      (self.transition2, self.stage3),
      (self.transition3, self.stage4),
    ):
      xs = []
      for i, t in enumerate(transition):
        x = ys[min(i, len(ys) - 1)]  # a new branch starts from the lowest-resolution one
        xs.append(x if isinstance(t, Identity) else run(_run_transition, t, x))
      for module in stage:
        if run is call_piece:  # branch by branch: branch i is the same program in every stage
          xs = [run(run_sequence, branch, x) for branch, x in zip(module.branches, xs)]
          xs = run(fuse_branches, module.fuse_layers, xs) if len(xs) > 1 else xs
        else:
          xs = run(apply, module, xs)
      ys = xs
    return run(_out_convs, self.convs, ys)


def _stem(backbone, images):
  x = images.astype(backbone.dtype)
  x = jax.nn.relu(backbone.bn1(backbone.conv1(x)))
  return jax.nn.relu(backbone.bn2(backbone.conv2(x)))


def _out_convs(convs, ys):
  return [jax.nn.relu(c["bn"](c["conv"](y))) for c, y in zip(convs, ys)]


def output_size(h: int, w: int, scale: int):
  """`(h_s, w_s)` of scale `s` (0..3) for an input of `h x w`: ceil-halved `s + 2` times."""
  for _ in range(scale + 2):
    h, w = math.ceil(h / 2), math.ceil(w / 2)
  return h, w
