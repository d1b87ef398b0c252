"""Object localisation as in VGG appendix A: a ConvNet whose last layer regresses a box,
trained with a Euclidean loss, tested by the two protocols of A.1. One module per concern:

    ../data/boxes.py  boxes: bboxes.csv, BoxFolder, BoxLoader (boxes through rescale, crop
                      and flip), the (cx, cy, w, h) code the net regresses, IoU
    ../tasks.py       Localisation: the trainer's task (targets, Euclidean loss, IoU > 0.5)
    ../ops.py         euclidean_loss, over kernels/euclidean.py (gather, loss, scatter)
    nets.py           loading localisation nets and their classifiers; boxes from a
                      central crop (protocol 1) and from every window of the dense view
    merge.py          OverFeat's greedy merging (Sermanet et al. 2014, sect. 4.3)
    protocols.py      protocol 1 (Table 8) and protocol 2 (Table 9) over a data set
    cli.py            python -m minivgg.localise train | evaluate

A localisation net is a VGG with 4 outputs (SCR) or 4 x classes (PCR) in its last layer,
so model.dense() turns it into a map of boxes (sect. 3.2) like any VGG.
"""
from minivgg.localise.merge import THRESHOLD, best_box, greedy_merge, match_score
from minivgg.localise.nets import (centre_boxes, dense_boxes, group_of, is_localiser,
                                   load_classifiers, load_localisers)
from minivgg.localise.protocols import (IOU_CORRECT, candidate_boxes, localise, protocol1,
                                        protocol2)

__all__ = ["IOU_CORRECT", "THRESHOLD", "best_box", "candidate_boxes", "centre_boxes",
           "dense_boxes", "greedy_merge", "group_of", "is_localiser", "load_classifiers",
           "load_localisers", "localise", "match_score", "protocol1", "protocol2"]
