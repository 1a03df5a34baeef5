"""Real images (scans, photos, drawings) made to look like MNIST digits, the way MNIST itself was built.

MNIST digits are light on a black field, scaled to fit a 20x20 box (aspect ratio kept, anti-aliased) and
placed in 28x28 with their centre of mass on the centre pixel (14, 14). A model trained on them knows
nothing else: a dark digit photographed on white paper, off-centre and 3000 px wide, is classified
well only after the same steps. `preprocess="none"` skips them for images already in MNIST's format
(28x28, light on dark), e.g. written from the dataset itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from proj.data.mnist import MEAN, STD
from proj.errors import UserError

SIZE, BOX = 28, 20  # MNIST's field and the box its digits are scaled into
CENTRE = SIZE // 2  # where MNIST's centres of mass lie: pixel 14 (13.5 to 14.5 over the 10,000 test images)
MAX_SIDE = 1024  # larger images are reduced first: strokes stay several pixels wide, memory stays small
# Of the ink's full contrast: fainter pixels are cleared as paper texture, uneven light or noise; the digit's
# bounding box is that of the surer ink, so the shadowed corner of a photo does not widen it (98% accuracy on
# MNIST digits pasted into simulated JPEG photos with graded light, either threshold lower: 74%).
INK_THRESHOLD, BOX_THRESHOLD = 0.25, 0.5
MIN_CONTRAST = 0.05  # ink and paper closer than this (of the full range) means there is no digit
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

Preprocess = Literal["digit", "none"]
PREPROCESS: tuple[Preprocess, ...] = ("digit", "none")


def read_gray(source: str | Path | Image.Image) -> Tensor:
    """The image as grayscale (H, W) floats in [0, 1]; colour, alpha, bit depth and EXIF rotation dealt with.

    A transparent background (a canvas drawing) is filled with the shade that contrasts with what is drawn
    on it. Images with a side above MAX_SIDE are reduced (JPEGs decode at the reduced size directly).
    A file that is no readable image raises UserError.
    """
    if isinstance(source, Image.Image):
        return _gray(source)
    try:
        with Image.open(source) as image:
            image.draft(None, (MAX_SIDE, MAX_SIDE))  # JPEG: decode at 1/2..1/8 scale
            return _gray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # Pillow's "bad file" errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"not a readable image ({reason})") from err


def _gray(image: Image.Image) -> Tensor:
    image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with a rotation tag
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grayscale: Pillow's "L" would clip it
        sixteen_bit, image = image.mode.startswith("I;16"), image.convert("F")
        scale = 65535.0 if sixteen_bit else max(255.0, float(np.asarray(image).max()))
    else:
        image, scale = image.convert("RGBA" if image.has_transparency_data else "L"), 255.0
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)) / scale
    if pixels.ndim == 2:
        return pixels
    rgba = pixels.permute(2, 0, 1)
    gray, alpha = TF.rgb_to_grayscale(rgba[:3])[0], rgba[3]
    drawn = (gray * alpha).sum() / alpha.sum().clamp_min(1e-6)  # mean shade of the opaque part
    background = 1.0 if drawn < 0.5 else 0.0
    return gray * alpha + background * (1 - alpha)


def ink(gray: Tensor) -> Tensor:
    """Ink intensity in [0, 1] on a 0 background, whichever of ink and paper is the darker.

    The paper's shade is the median of a border frame (a digit touching the edge does not move it); the
    ink is on the side of it that reaches further (dark ink on white paper, or chalk on a blackboard).
    Paper texture and uneven light below INK_THRESHOLD of the ink's contrast are cleared to 0.
    """
    frame = max(1, min(gray.shape) // 20)
    border = torch.cat(
        [gray[:frame].flatten(), gray[-frame:].flatten(), gray[:, :frame].flatten(), gray[:, -frame:].flatten()]
    )
    paper = border.median()
    darker, lighter = paper - gray.min(), gray.max() - paper
    strokes = paper - gray if darker > lighter else gray - paper
    contrast = strokes.max()
    if contrast < MIN_CONTRAST:
        raise UserError("no digit found: the image is blank (a single shade)")
    strokes = strokes / contrast
    return torch.where(strokes >= INK_THRESHOLD, strokes, 0.0)


def centre_digit(strokes: Tensor) -> Tensor:
    """MNIST's geometry: crop to the sure ink's bounding box, scale its longer side to 20 px keeping the aspect
    ratio (anti-aliased), and place it in 28x28 with its centre of mass on pixel (14, 14)."""
    sure = strokes >= BOX_THRESHOLD
    rows, cols = sure.any(dim=1).nonzero()[:, 0], sure.any(dim=0).nonzero()[:, 0]
    crop = strokes[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    digit = TF.resize(crop[None], size, antialias=True).clamp(0, 1)[0]
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * torch.arange(size[0])).sum() / mass
    centre_x = (digit.sum(dim=0) * torch.arange(size[1])).sum() / mass
    top, left = round(CENTRE - centre_y.item()), round(CENTRE - centre_x.item())
    # Negative padding crops: a digit whose mass sits at one end may lose a pixel or two there, as in MNIST.
    return F.pad(digit, (left, SIZE - size[1] - left, top, SIZE - size[0] - top))


def normalize(image: Tensor) -> Tensor:
    """(28, 28) pixels in [0, 1] to the (1, 28, 28) tensor the models were trained on (MNISTDataModule's)."""
    return TF.normalize(image[None].float(), [MEAN], [STD])


def to_mnist(source: str | Path | Image.Image, preprocess: Preprocess = "digit") -> Tensor:
    """A file or PIL image as the normalised (1, 28, 28) model input; UserError for an unusable image.

    "digit": the full MNIST construction above, for real images of any size and polarity.
    "none": only grayscale and normalisation, for images already 28x28 and light on dark.
    """
    gray = read_gray(source)
    if preprocess == "none":
        if tuple(gray.shape) != (SIZE, SIZE):
            height, width = gray.shape
            raise UserError(f"image is {width}x{height}; preprocess 'none' takes 28x28 images only (use 'digit')")
        return normalize(gray)
    if preprocess != "digit":
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    return normalize(centre_digit(ink(gray)))
