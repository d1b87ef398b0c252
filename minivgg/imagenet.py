"""The 1000 ImageNet-1k class names (ILSVRC-2012, the paper's data set, sect. 4).

    from minivgg import imagenet
    imagenet.CLASS_COUNT          # 1000
    imagenet.classes()[281]       # 'tabby'

The names live in imagenet1k.txt beside this module (package data), so a converted
ImageNet model prints "tabby  61.2%", not "class 281". Their order is the standard one,
the one every released ImageNet model's last layer uses.
"""
import functools
from importlib import resources

CLASS_COUNT = 1000


@functools.lru_cache(maxsize=1)
def _names():
    text = resources.files("minivgg").joinpath("imagenet1k.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines()
                  if line.strip() and not line.startswith("#"))
    if len(names) != CLASS_COUNT:  # a damaged install, not a user's mistake
        raise RuntimeError(f"imagenet1k.txt holds {len(names)} names, not {CLASS_COUNT}")
    return names


def classes():
    """The 1000 class names, output i of an ImageNet model first (a new list each call)."""
    return list(_names())
