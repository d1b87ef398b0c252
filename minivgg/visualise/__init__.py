"""Seeing what a trained net learned: AlexNet's qualitative evaluation (its sect. 6.1,
Figs. 3 and 4) and ZFNet's visualisations (Zeiler & Fergus 2013: deconvnet, occlusion,
feature evolution).

    python -m minivgg.visualise filters    CKPT          first-layer kernels, colourfulness
    python -m minivgg.visualise top5       CKPT [...]    images and their top-5 labels
    python -m minivgg.visualise neighbours CKPT [...]    nearest images: last hidden layer
                                                         vs raw pixels
    python -m minivgg.visualise deconv     CKPT --layer L [--maps K ...]
                                                         top images of a map, deconvnet
                                                         projections
    python -m minivgg.visualise occlusion  CKPT [--size S --stride T]
                                                         p(correct class) under a grey square
    python -m minivgg.visualise evolution  RUN_DIR [--layer L]
                                                         the snapshots of
                                                         train --snapshot-epochs E ...

Each writes NAME.png and NAME.json (the numbers behind the figure) into --out (default: a
`visualise` folder beside the checkpoint). Images: --data, an image folder (ROOT/<split>/
<class>/*, ROOT/<class>/* or images in ROOT), or by default the built-in set the checkpoint
was trained on; every command looks at the net's view of an image, the central crop at
the test scale (common.py). Every config works: VGG A-E, AlexNet (its two towers: filters
groups the first layer's kernels by tower), ZFNet, LeNet-5; NiN and GoogLeNet in all but
deconv (which walks a chain of layers), their neighbours in the pooled maps their last
layer reads (hidden_features: they have no hidden FC layer).

    common.py      the checkpoint, images, views, layers by name, receptive fields, output
    deconv.py      ZFNet's deconvnet from the project's backward kernels
    maps.py        top images of a feature map and their projections (ZFNet Fig. 2)
    filters.py     first-layer kernels and colourfulness (AlexNet Fig. 3)
    top5.py        top-5 panels (AlexNet Fig. 4, left)
    neighbours.py  nearest neighbours, features vs pixels (AlexNet Fig. 4, right)
    occlusion.py   occlusion sensitivity (ZFNet Fig. 7)
    evolution.py   features by epoch (ZFNet Fig. 4)
    commands.py    the sub-commands; cli.py: the parser
"""
from minivgg.visualise.cli import main

__all__ = ["main"]
