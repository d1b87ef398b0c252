"""`python -m minivgg`: which device would run, and why; the version; the commands."""
import argparse

from minivgg import __version__, backend
from minivgg.errors import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minivgg",
        description="Show minivgg's version and the device it would use. The commands: "
                    "python -m minivgg.train | evaluate | predict | data | bench | convert | "
                    "localise | features.")
    backend.add_device_argument(parser)
    args = parser.parse_args(argv)
    dev = backend.set_device(args.device)
    print(f"minivgg {__version__}")
    print(f"device: {dev.name} ({dev.reason})")


if __name__ == "__main__":
    run_cli(main)
