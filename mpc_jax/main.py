"""The `mpc-jax` command: one entry, sub-commands dispatched to the module that owns them.

    mpc-jax train   --config configs/demo.py --workdir DIR [--config.field=value ...]
    mpc-jax eval    --checkpoint DIR --data SPEC [...]
    mpc-jax predict IMAGE_OR_DIR... --checkpoint DIR --out DIR
    mpc-jax convert IN.pth --out DIR [--head casiav2] [--hrformer-config hrt_base]
    mpc-jax synth   --out DIR --num N --seed S
"""
import importlib
import sys

COMMANDS = {
    "train": ("mpc_jax.train_cli", "Train stage 1 and/or stage 2 from an ml_collections config."),
    "eval": ("mpc_jax.evaluate", "Evaluate a checkpoint on test sets (paper protocol, robustness sweeps)."),
    "predict": ("mpc_jax.predict", "Predict forgery maps for images or folders."),
    "convert": ("mpc_jax.convert", "Convert official PyTorch weights to an mpc-jax checkpoint."),
    "synth": ("mpc_jax.data.synthetic", "Write a folder of synthetic forgeries."),
}


def _usage() -> str:
    lines = ["usage: mpc-jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def run(argv=None) -> int:
    """Console-script entry: `argv[0]` is the sub-command; its module's `cli_main(argv_rest)` runs it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mpc-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.cli_main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(run())
