"""Very deep features on other data sets (Appendix B): descriptors, a linear SVM, Table 11.

    python -m minivgg.features extract CKPT [CKPT ...] [--data DIR] [--out feats.npz]
                                       [--scales Q ...] [--aggregate stack|average]
                                       [--no-flip]
    python -m minivgg.features classify feats.npz [--splits 3 --train-per-class 30
                                                   --test-per-class 50]

A net trained on one data set, its last layer removed, describes the images of another:
the penultimate layer's map over the whole image (the dense view of sect. 3.2), after its
ReLU, average-pooled, averaged with the mirror image, over several scales Q stacked or
averaged, L2-normalised (extract.py); several nets' descriptors are stacked (late
fusion). A linear SVM on them, with no fine-tuning, is then measured by the Caltech
protocol: random splits with a fixed number of training images per class, C chosen on
20% of them, mean class recall over the splits, and one-vs-rest mean average precision
beside it (protocol.py). A raw-pixel SVM on the same splits says how hard the set is.

    extract.py       penultimate, scale_descriptors, net_descriptors, descriptors, pixels
    store.py         the .npz features file (save / load; no pickle, checked)
    protocol.py      draw_splits, holdout, mean_class_recall, average_precision, run
                     (scikit-learn's LinearSVC: `pip install 'minivgg[features]'`)
    cli.py           the command line

Data: any image folder DIR/<class>/<image>; by default the built-in transfer set
(minivgg/data/transfer.py: ten shape classes the trained nets never saw).
"""
from minivgg.features.cli import main
from minivgg.features.extract import (AGGREGATES, batches, descriptors, l2_normalise,
                                      net_descriptors, penultimate, pixels, rescaled_shape,
                                      scale_descriptors)
from minivgg.features.protocol import (average_precision, draw_splits, holdout,
                                       mean_average_precision, mean_class_recall)

__all__ = ["AGGREGATES", "average_precision", "batches", "descriptors", "draw_splits",
           "holdout", "l2_normalise", "main", "mean_average_precision", "mean_class_recall",
           "net_descriptors", "penultimate", "pixels", "rescaled_shape", "scale_descriptors"]
