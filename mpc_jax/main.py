"""The `mpc-jax` command: one entry, sub-commands dispatched to the module that owns them.

    mpc-jax train   --config configs/demo.py --workdir DIR [--config.field=value ...]
    mpc-jax eval    --checkpoint DIR --data SPEC [...]
    mpc-jax predict IMAGE_OR_DIR... --checkpoint DIR --out DIR
    mpc-jax convert IN.pth --out DIR [--head casiav2] [--hrformer-config hrt_base]
    mpc-jax synth   --out DIR --num N --seed S
    mpc-jax prepare SPEC [SPEC ...] --out DIR [--workers N]

Every command takes `--help`, `--version` and `--debug`. Errors are one line on stderr, exit status 2
for usage errors and 1 for failures; `--debug` shows the traceback instead.
"""

import gc
import importlib
import sys

from mpc_jax import __version__

COMMANDS = {
  "train": ("mpc_jax.train_cli", "Train stage 1 and/or stage 2 from an ml_collections config."),
  "eval": ("mpc_jax.evaluate", "Evaluate a checkpoint on test sets (paper protocol, robustness sweeps)."),
  "predict": ("mpc_jax.predict", "Predict forgery maps for images or folders."),
  "convert": ("mpc_jax.convert", "Convert official PyTorch weights to an mpc-jax checkpoint."),
  "synth": ("mpc_jax.data.synthetic", "Write a folder of synthetic forgeries."),
  "prepare": ("mpc_jax.prepare", "Pack data sources into ArrayRecord shards (read with arrayrecord:DIR)."),
}
# Exceptions whose message names the problem by itself; others are shown with their type.
_PLAIN = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, ImportError)


class UsageError(Exception):
  """A bad command line: `mpc-jax` prints the message and exits with status 2."""


def version_line() -> str:
  return f"mpc-jax {__version__}"


def _usage() -> str:
  lines = ["usage: mpc-jax [--version] COMMAND [ARGS...] [--debug]", "", "commands:"]
  lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
  lines += ["", "`mpc-jax COMMAND --help` describes a command; --debug shows tracebacks."]
  return "\n".join(lines)


def add_common_args(parser) -> None:
  """`--version` and `--debug` in an argparse parser's help (`run` handles both before the command)."""
  parser.add_argument("--version", action="version", version=version_line())
  parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def error_line(prog: str, err: BaseException) -> str:
  msg = str(err) if isinstance(err, _PLAIN) and str(err) else f"{type(err).__name__}: {err}"
  return f"{prog}: error: {msg}"


def run(argv=None) -> int:
  """Console-script entry: `argv[0]` is the sub-command; its module's `cli_main(argv_rest)` runs it."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  if "--version" in argv and "--help" not in argv and "-h" not in argv:
    print(version_line())
    return 0
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage(), file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"mpc-jax: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  prog = f"mpc-jax {name}"
  try:
    if name in ("train", "eval", "predict"):
      from mpc_jax import compile_cache, host_memory

      host_memory.retain_freed_memory()  # before JAX makes its CPU client
      compile_cache.enable()  # `train` may point it elsewhere (config.compilation_cache_dir)
    code = importlib.import_module(COMMANDS[name][0]).cli_main(rest)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except UsageError as e:
    if debug:
      raise
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - one line unless --debug
    if debug:
      raise
    print(error_line(prog, e) + " (--debug shows the traceback)", file=sys.stderr)
    return 1
  return int(code or 0)


def main() -> None:
  """The `mpc-jax` program: `run`, then exit. Every output is written and closed by then, so the
  interpreter's last garbage collection, which only walks the objects JAX and flax made (0.3 s), is
  skipped (`gc.freeze`); atexit handlers and the flushing of stdout and stderr still run."""
  code = run()
  gc.freeze()
  sys.exit(code)


if __name__ == "__main__":
  from mpc_jax.main import main as _main  # the package's module, whose UsageError the commands raise

  _main()
