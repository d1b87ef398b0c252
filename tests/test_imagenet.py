"""The ImageNet-1k class names shipped with the package (minivgg/imagenet1k.txt)."""
import os
import tomllib

from minivgg import imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_thousand_distinct_names_in_the_standard_order():
    names = imagenet.classes()
    assert len(names) == imagenet.CLASS_COUNT == 1000 and len(set(names)) == 1000
    # Indices every ImageNet user meets (torchvision's and Keras's names for them).
    for i, name in {0: "tench", 1: "goldfish", 151: "Chihuahua", 207: "golden retriever",
                    281: "tabby", 285: "Egyptian cat", 291: "lion", 340: "zebra",
                    388: "giant panda", 397: "puffer", 398: "abacus", 409: "analog clock",
                    504: "coffee mug", 508: "computer keyboard", 652: "military uniform",
                    817: "sports car", 920: "traffic light", 948: "Granny Smith",
                    954: "banana", 963: "pizza", 999: "toilet tissue"}.items():
        assert names[i] == name, (i, names[i])
    # The two names torchvision and Keras repeat are told apart.
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")
    assert (names[638], names[639]) == ("maillot", "maillot (tank suit)")


def test_the_names_are_package_data():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "imagenet1k.txt" in data["minivgg"]
    assert os.path.isfile(os.path.join(ROOT, "minivgg", "imagenet1k.txt"))
