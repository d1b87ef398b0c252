"""`python -m minivgg.predict CLS IMAGE --boxes OUT.png --localiser LOC`: the merged box of
each of the top classes (protocol 2 of VGG appendix A.1) drawn on the photograph, with the
class name, its probability and the box's merged score."""
from minivgg import figures

COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00"]


def draw_boxes(img, guesses, probs, classes, path, title=""):
    """guesses [(class, corners, score)], best class first: rectangles on img, one PNG.
    The best guess is drawn last, on top, with the thickest line."""
    plt = figures.pyplot()
    H, W = img.shape[:2]
    fig, ax = plt.subplots(figsize=(5, 5 * H / W + 0.6))
    ax.imshow(img, extent=(0, W, H, 0))  # pixel edges: a box's corners are edges too
    for rank in reversed(range(len(guesses))):
        c, (x0, y0, x1, y1), score = guesses[rank]
        colour = COLOURS[rank % len(COLOURS)]
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour,
                                   linewidth=3 if rank == 0 else 1.5))
        ax.text(x0, y0, f"{rank + 1}. {classes[c]} {100 * probs[c]:.0f}%", color="white",
                fontsize=8, va="bottom", bbox=dict(facecolor=colour, alpha=0.8, pad=1,
                                                   linewidth=0))
    ax.set_xlim(min(0, ax.get_xlim()[0]), max(W, ax.get_xlim()[1]))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    figures.save(fig, path, dpi=90)


def predict_boxes(localisers, classifier, img, path, top=5, grid=None):
    """Protocol 2 on one image, drawn into path; -> the guesses."""
    from minivgg.localise.protocols import localise
    guesses, probs = localise(localisers, [classifier], img, top, grid=grid)
    scales = sorted({q for n in localisers for q in n.scales})
    how = "dense view" if grid is None else f"{grid}x{grid} crops"
    draw_boxes(img, guesses, probs, list(classifier.meta["classes"]), path,
               f"top-{top} boxes: {len(localisers)} net(s), {how}, Q = {scales}, merged")
    return guesses
