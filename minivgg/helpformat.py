"""The --help formatter every command with defaults uses: argparse's defaults, shown only
where they say something."""
import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one, it is not an on/off switch, and its
    help does not already say it: a flag whose value depends on something else (a preset,
    the device) has default None and says what it is in its help; "--no-torch (default:
    False)" or "--no-layer-table (default: True)" would only confuse."""

    def _get_help_string(self, action):
        if (action.default is None or action.nargs == 0
                or "default" in (action.help or "").lower()):
            return action.help
        return super()._get_help_string(action)
