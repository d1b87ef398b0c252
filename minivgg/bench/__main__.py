"""`python -m minivgg.bench [static] ...`: the timing tables, or the static ones."""
import sys

from minivgg.errors import run_cli


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["static"]:
        from minivgg.bench.static import main as static_main
        return static_main(argv[1:])
    from minivgg.bench.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
