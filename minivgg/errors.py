"""The error a user sees: one line, exit status 2, no traceback (DESIGN.md, "Bad input")."""
import sys


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file). Its message is one line."""


def run_cli(main, argv=None):
    """Call main(argv); turn a UserError into one line on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
