"""`python -m minivgg.localise train | evaluate` (see minivgg/localise/cli.py)."""
import sys

from minivgg.errors import run_cli
from minivgg.localise.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
