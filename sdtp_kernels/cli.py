"""The `sdtp` command line. Each subcommand lives in its own module and registers itself here."""
from __future__ import annotations

import argparse
import json
import sys

from .arguments import reporting_bad_input
from .demo import add_commands as add_demo_command
from .eval.cli import add_commands as add_eval_command
from .reference.cli import add_commands as add_reference_command
from .train.cli import add_commands as add_training_commands
from .vllm.export import add_commands as add_export_command


def _info(args: argparse.Namespace) -> int:
    from .ops import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtp", description="Saliency-driven Dynamic Token Pruning for LLM prefill.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print how this installation was built (JSON)")
    info.set_defaults(run=_info)
    add_demo_command(commands)
    add_training_commands(commands)
    add_eval_command(commands)
    add_reference_command(commands)
    add_export_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return reporting_bad_input(f"sdtp {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
