"""`python -m minivgg.features ...`: see minivgg/features/cli.py."""
import sys

from minivgg.errors import run_cli
from minivgg.features.cli import main

sys.exit(run_cli(main))
