"""What every lesson shares: its command line, its steps, its figures.

    lesson = Lesson(__doc__)          # parses --no-pause --out --device (+ extra flags)
    lesson.step("The claim")          # a numbered heading; pauses first in a terminal
    lesson.quote("...", "sect. 2.3")  # the paper's words
    lesson.save(fig, "name.png")      # writes out/name.png and prints "wrote ..."

The device is set (minivgg.backend.set_device) before anything imports numba.cuda, so
`--device sim` can switch the CUDA simulator on: import minivgg.ops, model, kernels...
only after Lesson(...) has run.
"""
import argparse
import inspect
import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

WIDTH = 88


class Lesson:
    def __init__(self, doc, add_arguments=None, device_override=None):
        """Parse the command line and pick the device.

        doc: the lesson's docstring (its first line is the title, the rest --help).
        add_arguments(parser): extra flags. device_override(name) -> name: lets a lesson
        replace the asked-for device (lesson 5 needs the simulator).
        """
        title, _, rest = doc.strip().partition("\n")
        self.title = title.strip()
        parser = argparse.ArgumentParser(
            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--no-pause", action="store_true",
                            help="run straight through (also when stdin is not a terminal)")
        parser.add_argument("--out", default=os.path.join(ROOT, "lessons", "out"),
                            help="folder for the figures (default: lessons/out/)")
        from minivgg import backend
        backend.add_device_argument(parser)
        if add_arguments:
            add_arguments(parser)
        self.args = parser.parse_args()
        self.pause = not self.args.no_pause and sys.stdin.isatty()
        self.asked_device = self.args.device
        name = device_override(self.args.device) if device_override else self.args.device
        try:
            self.device = backend.set_device(name)
        except backend.DeviceError as e:
            sys.exit(f"error: {e}")
        self.n_steps = 0
        print("=" * WIDTH)
        print(self.title)
        print("=" * WIDTH)
        print(f"device: {self.device.name} ({self.device.reason})")

    # -- telling the story ------------------------------------------------------------------
    def step(self, heading):
        """Start the next step: pause (in a terminal), then print its heading."""
        if self.n_steps and self.pause:
            try:
                input("\n[Enter] to go on, Ctrl-C to stop ")
            except EOFError:
                self.pause = False
        self.n_steps += 1
        print(f"\n--- Step {self.n_steps}: {heading} " + "-" * max(0, WIDTH - 14 - len(heading)))

    def quote(self, text, where, source="Simonyan & Zisserman, ICLR 2015"):
        """The paper's words (or `source`'s), quoted and wrapped, with where they are."""
        body = textwrap.fill(" ".join(text.split()), WIDTH - 4, initial_indent='  > "',
                             subsequent_indent="  >  ")
        print(body + '"')
        print(f"  > -- {source}, {where}")

    def say(self, text):
        """Paragraphs of plain text, wrapped; indented lines (formulas, code) kept as they are."""
        if text.startswith("\n"):
            print()
        for para in inspect.cleandoc(text).split("\n\n"):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines):
                print("\n".join(lines))
            else:
                print(textwrap.fill(" ".join(para.split()), WIDTH))

    def table(self, header, rows, align=None):
        """A plain-text table: header (names), rows (tuples), align ('<' or '>' per column)."""
        cols = list(zip(*([header] + [tuple(str(c) for c in r) for r in rows])))
        widths = [max(len(c) for c in col) for col in cols]
        align = align or ["<"] + [">"] * (len(header) - 1)
        fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
        print(fmt.format(*header))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(fmt.format(*(str(c) for c in r)))

    # -- figures ------------------------------------------------------------------------------
    def plt(self):
        """matplotlib.pyplot with the Agg backend (no display needed)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt

    def save(self, fig, name):
        """Write `fig` as out/name (PNG) and say so."""
        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, name)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        self.plt().close(fig)
        print(f"wrote figure: {path}")
        return path

    def done(self, summary=None):
        print()
        if summary:
            self.say(summary)
        print(f"End of lesson: {self.title}")


def sample_photo(side=None):
    """Grace Hopper from matplotlib's sample data as an RGB uint8 array (H, W, 3), or a drawn
    stand-in if the file is missing. side: rescale so the smaller side is `side`."""
    import numpy as np
    from PIL import Image
    img = None
    try:
        import matplotlib.cbook as cbook
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            img = Image.open(f).convert("RGB")
            img.load()
    except Exception:  # no sample data shipped: draw a picture instead
        yy, xx = np.mgrid[0:600, 0:512]
        a = np.stack([128 + 100 * np.sin(xx / 40.0), 128 + 100 * np.cos(yy / 50.0),
                      128 + 60 * np.sin((xx + yy) / 70.0)], axis=2)
        a[200:400, 150:350] = (230, 60, 40)
        img = Image.fromarray(a.astype(np.uint8))
    if side:
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))),
                         Image.BILINEAR)
    return np.asarray(img)
