"""`python -m minivgg.visualise ...`: see minivgg/visualise/cli.py."""
import sys

from minivgg.errors import run_cli
from minivgg.visualise.cli import main

sys.exit(run_cli(main))
