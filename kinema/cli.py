"""The `kinema` command.

    kinema generate "a red circle moving right on a blue background" -o clip.mp4
    kinema info [MODEL] --frames 64
    kinema init runs/default/model --preset small
    kinema train configs/default.yaml --model runs/default/model
"""

from __future__ import annotations

import argparse
import sys

from .errors import KinemaError


def cmd_init(args) -> None:
    from . import loading

    path = loading.init(args.dir, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a randomly initialised {args.preset} model to {path}")


def cmd_train(args) -> None:
    from .train import train

    path = train(args.config, args.model, args.run, args.stages)
    print(f"trained model in {path}")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="kinema", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="write a randomly initialised model folder", formatter_class=fmt)
    s.add_argument("dir", help="model folder to create")
    s.add_argument("--preset", default="small", help="backbone preset (tiny, small, base)")
    s.add_argument("--seed", type=int, default=0, help="initialisation seed")
    s.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("train", help="train the VAE and denoiser of a model folder on the world", formatter_class=fmt)
    s.add_argument("config", help="training config (YAML), e.g. configs/default.yaml")
    s.add_argument("--model", required=True, help="model folder made by `kinema init`; rewritten as training goes")
    s.add_argument("--run", default=None, help="run folder for checkpoints, caches and logs (default runs/<config name>)")
    s.add_argument("--stages", default="all", choices=["all", "vae", "denoiser"], help="which stages to run")
    s.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KinemaError as e:
        print(f"kinema: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kinema: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
