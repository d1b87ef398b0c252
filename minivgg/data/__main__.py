"""`python -m minivgg.data ...`: see minivgg/data/cli.py."""
import sys

from minivgg.data.cli import main
from minivgg.errors import run_cli

sys.exit(run_cli(main))
