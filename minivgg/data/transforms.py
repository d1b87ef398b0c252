"""The paper's augmentation and pre-processing of one image (VGG sect. 3.1 and 2.1;
AlexNet sect. 4.1): isotropic rescale to a smallest side S (fixed or jittered), random or
centre crops, horizontal flips, the PCA colour shift, mean (and std) normalisation, and
the training set's RGB statistics they need.
"""
import numpy as np
from PIL import Image

from minivgg.data.errors import DataError


def sample_scale(scale, rng):
    """S for one image: a fixed int S, or (Smin, Smax) -> uniform integer in [Smin, Smax]."""
    if isinstance(scale, (tuple, list)):
        lo, hi = scale
        return int(rng.integers(lo, hi + 1))
    return int(scale)


def rescale(img, S, resample=Image.BILINEAR):
    """Isotropic rescale so the smallest side is exactly S (sect. 3.1, "training scale").

    The other side is rounded, keeping the aspect ratio. uint8 images go through Pillow as
    RGB; float32 images channel by channel (mode F). Pillow widens the filter when it
    shrinks, so downscaling is anti-aliased. Pillow releases the GIL while resizing, which
    is what lets Loader's threads run in parallel.
    """
    H, W = img.shape[:2]
    if S < 1:
        raise DataError(f"rescale: S must be >= 1, got {S}")
    if H <= W:
        size = (max(1, round(W * S / H)), S)   # Pillow's size is (width, height)
    else:
        size = (S, max(1, round(H * S / W)))
    if size == (W, H):
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize(size, resample))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c], np.float32))
                        .resize(size, resample)) for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _check_crop(img, crop):
    H, W = img.shape[:2]
    if crop > min(H, W):
        raise DataError(f"crop {crop} is larger than the image ({H}x{W}); "
                        f"rescale to a smallest side >= {crop} first")


def random_crop(img, crop, rng):
    """A crop x crop patch at a uniformly random position (AlexNet 4.1, VGG 3.1)."""
    _check_crop(img, crop)
    H, W = img.shape[:2]
    y = int(rng.integers(0, H - crop + 1))
    x = int(rng.integers(0, W - crop + 1))
    return img[y:y + crop, x:x + crop]


def center_crop(img, crop):
    """The central crop x crop patch (validation; offsets rounded down)."""
    _check_crop(img, crop)
    H, W = img.shape[:2]
    y, x = (H - crop) // 2, (W - crop) // 2
    return img[y:y + crop, x:x + crop]


def hflip(img):
    """Mirror left-right (a view)."""
    return img[:, ::-1]


def random_flip(img, rng, p=0.5):
    """Horizontal reflection with probability p (AlexNet 4.1, VGG 3.1)."""
    return hflip(img) if rng.random() < p else img


def rgb_statistics(source):
    """(mean_rgb, eigval, eigvec) of the RGB pixels of a training set, in [0, 255] units.

    source: a dataset (dataset[i] -> (image, label)), a list of HxWx3 arrays, or one array
    whose last axis is RGB. Computed once, in float64, streaming over images.

    mean_rgb (3,): the mean RGB value subtracted from every pixel (VGG sect. 2.1).
    eigval (3,), descending, and eigvec (3, 3), one unit eigenvector per COLUMN: the
    eigen-decomposition of the 3x3 covariance of RGB pixel values (AlexNet sect. 4.1).
    Each eigenvector's largest component is made positive, so the result is deterministic.
    """
    n, s, ss = 0, np.zeros(3), np.zeros((3, 3))
    for img in _images_of(source):
        x = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        n += len(x)
        s += x.sum(axis=0)
        ss += x.T @ x
    if n == 0:
        raise DataError("rgb_statistics: no pixels")
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), range(3)])
    return mean, eigval, eigvec * signs


def _images_of(source):
    if isinstance(source, np.ndarray):
        yield source
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__") and len(source) \
            and isinstance(source[0], tuple):
        for i in range(len(source)):
            yield source[i][0]
    else:
        yield from source


def pca_lighting(img, eigval, eigvec, rng, std=0.1):
    """AlexNet's colour augmentation (Krizhevsky et al. sect. 4.1): add one RGB shift.

    shift = eigvec @ (alpha * sqrt(eigval)), alpha ~ N(0, std^2), 3 values drawn once per
    image, added to every pixel. img: HxWx3 float (pixels in [0, 255]), returns float32.

    Why sqrt: the paper writes alpha_i * lambda_i with lambda_i an eigenvalue of the
    covariance, but an eigenvalue is in squared pixel units (~5000 for [0, 255] images),
    so taken literally the shift would be hundreds of grey levels. sqrt(lambda_i) is the
    standard deviation along principal axis i, so the shift is 10% of the natural colour
    spread per axis (about +-10 grey levels on natural images), which is what the paper's
    "magnitudes proportional to the eigenvalues" needs to mean to be a small lighting
    change. (Public reimplementations ship eigval tables of this kind.)
    """
    shift = pca_shift(eigval, eigvec, rng.normal(0.0, std, size=3))
    return np.asarray(img, dtype=np.float32) + shift.astype(np.float32)


def pca_shift(eigval, eigvec, alpha):
    """The RGB shift for given alphas: eigvec @ (alpha * sqrt(eigval)), shape (3,)."""
    return np.asarray(eigvec) @ (np.asarray(alpha) * np.sqrt(np.asarray(eigval)))


def subtract_mean(img, mean_rgb):
    """float32 img - the training set's mean RGB (VGG sect. 2.1, the only pre-processing)."""
    return np.asarray(img, dtype=np.float32) - np.asarray(mean_rgb, dtype=np.float32)


def normalise(img, mean_rgb, std_rgb=None):
    """The network's input: img - mean RGB (the paper), then / std RGB when given.

    The paper feeds mean-subtracted pixels (spread ~60) to nets initialised with
    N(0, 0.01^2). Variance-preserving initialisations (Glorot, Kaiming) expect inputs of
    unit spread, so for those the presets also divide by the per-channel std.
    """
    x = subtract_mean(img, mean_rgb)
    if std_rgb is not None:
        x = x / np.asarray(std_rgb, dtype=np.float32)
    return x


def channel_std(eigval, eigvec):
    """Per-channel standard deviation from the RGB covariance's eigen-decomposition."""
    cov = eigvec @ np.diag(eigval) @ eigvec.T
    return np.sqrt(np.diag(cov)).astype(np.float32)
