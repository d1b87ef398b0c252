"""Figures for the command lines: matplotlib without a screen, PNGs written atomically."""
import os


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed: servers, CI, ssh)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path, dpi=90):
    """Write fig to path as PNG via a temp file and a rename, so a reader (or a plot
    refreshed every epoch) never sees half a file; then free the figure."""
    tmp = os.fspath(path) + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
