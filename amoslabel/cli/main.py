"""``python -m amoslabel COMMAND ...``: the command line.

Each command group is a module with ``register(subparsers)``, which adds its commands and sets ``run`` on each to
the function that carries it out (a registry, not an if-chain). ``main`` parses, runs, and turns a bad input or
configuration into a message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from amoslabel.cli import case_commands, cohort, data_commands, evaluate, model_versions, serving, team, training
from amoslabel.config import ConfigError
from amoslabel.errors import InputError

COMMAND_GROUPS = (serving, data_commands, evaluate, team, case_commands, model_versions, training, cohort)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amoslabel", description="AMOS Label commands")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args))
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
