"""`python -m minivgg.convert SRC DST [--from torchvision|timm|keras]`: see minivgg.convert."""
import argparse
import os
import sys

from minivgg.convert import PREPROCESS, SOURCES, WRITABLE, layouts, read, write
from minivgg.errors import UserError, run_cli


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.convert",
        description="Convert VGG weights (the paper's released nets D and E, as torchvision, "
                    "timm or Keras distribute them) into a minivgg checkpoint that records the "
                    "preprocessing they expect and the class names; or a minivgg checkpoint "
                    "into .safetensors with torchvision's names, for PyTorch.")
    p.add_argument("src", metavar="SRC",
                   help="torchvision .pth (a state dict), .safetensors (torchvision or timm "
                        "names), Keras .h5 (keras.applications layout), or a minivgg .npz")
    p.add_argument("dst", metavar="DST",
                   help="DST.npz: a minivgg checkpoint; DST.safetensors: torchvision names, "
                        "for PyTorch")
    p.add_argument("--from", dest="source", choices=SOURCES,
                   help="where SRC comes from (default: told from the file); it sets the "
                        "preprocessing: torchvision and timm RGB / 255 with ImageNet's mean "
                        "and std, keras Caffe's BGR minus the mean pixel")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS),
                   help="override the preprocessing SRC's weights expect (e.g. caffe for a "
                        "port of the Caffe release with torchvision's names)")
    p.add_argument("--classes", metavar="FILE",
                   help="class names, one per line (default: the ImageNet-1k names for 1000 "
                        "outputs, else those SRC records, else 'class i')")
    return p


def read_classes(path):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"--classes {path}: {e.strerror}") from None


def describe(c, model):
    d, p = c.definition, c.meta.get("preprocess")
    lines = [f"{layouts.label(d['config'])}, {model.num_parameters():,} parameters, "
             f"{d['num_classes']} classes, input {d['input_size']}"
             + ("" if d["width"] == 1 else f", width {d['width']:g}")]
    if p is not None:
        std = "" if p["std"] is None else f", / std {tuple(round(v, 4) for v in p['std'])}"
        scale = "" if p["scale"] == 1 else f" / {1 / p['scale']:.6g},"
        lines.append(f"preprocessing: {p['channels']},{scale} - mean "
                     f"{tuple(round(v, 4) for v in p['mean'])}{std}")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if os.path.splitext(args.dst)[1].lower() not in WRITABLE:  # before reading 500 MB
        raise UserError(f"{args.dst}: write a .npz (minivgg checkpoint) or a .safetensors file")
    c = read(args.src, args.source, args.preprocess, read_classes(args.classes))
    print(f"read {args.src}: {c.source} weights")
    model = write(c, args.dst)
    print(describe(c, model))
    print(f"wrote {args.dst}")
    if args.dst.lower().endswith(".npz"):
        print(f"next: python -m minivgg.predict --weights {args.dst} photo.jpg --heatmap map.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
