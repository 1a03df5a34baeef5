"""Real images (scans, photos, drawings) made into a trained model's input, the way its training images were made.

A checkpoint describes its data (`ImageDataModule.description()`): input shape (C, H, W), class names, per-channel
mean and std, and whether the images are handwritten digits. `prepare` turns any image file into that input:

- "digit" (digit models: MNIST): MNIST's own construction. MNIST digits are light on a black field, scaled to fit
  a 20x20 box (aspect ratio kept, anti-aliased) and placed in 28x28 with their centre of mass on the centre pixel
  (14, 14). A model trained on them knows nothing else: a dark digit photographed on white paper, off-centre and
  3000 px wide, is classified well only after the same steps. For another field size the box scales with it.
- "resize" (every other model): converted to the model's channels (grayscale or RGB), resized to cover its size
  keeping the aspect ratio, and centre-cropped: what ImageFolderDataModule trains on (`read_image`).
- "none": images already of the model's size (e.g. written from the data set itself); only the channels are
  converted.

Then the pixels, scaled to [0, 1], are normalised with the description's mean and std, as in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageOps
from torch import Tensor
from torch.nn import functional as F
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from proj.errors import UserError

# MNIST's construction: digits scaled into a BOX-pixel box within a FIELD-pixel field, their centre of mass on the
# field's centre pixel (14 of 28: 13.5 to 14.5 over the 10,000 test images). Other field sizes keep the ratio.
FIELD, BOX = 28, 20
MAX_SIDE = 1024  # larger images are reduced first: strokes stay several pixels wide, memory stays small
# Of the ink's full contrast: fainter pixels are cleared as paper texture, uneven light or noise; the digit's
# bounding box is that of the surer ink, so the shadowed corner of a photo does not widen it (98% accuracy on
# MNIST digits pasted into simulated JPEG photos with graded light, either threshold lower: 74%).
INK_THRESHOLD, BOX_THRESHOLD = 0.25, 0.5
MIN_CONTRAST = 0.05  # ink and paper closer than this (of the full range) means there is no digit
# What torchvision's ImageFolder takes and this Pillow opens (WebP, for one, only where Pillow was built with it).
SUFFIXES = tuple(suffix for suffix in IMG_EXTENSIONS if suffix in Image.registered_extensions())

Preprocess = Literal["auto", "digit", "resize", "none"]
PREPROCESS: tuple[Preprocess, ...] = ("auto", "digit", "resize", "none")
Source = str | Path | Image.Image | BinaryIO  # a file's path, a decoded image, or an open binary file


def image_files(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """The image files under `folder` (by suffix: SUFFIXES), sorted. Hidden files and folders (.ipynb_checkpoints,
    macOS "._" copies) are passed over silently; other files are added to `skipped`, for `say_skipped`."""
    files = sorted(
        path
        for path in folder.rglob("*")
        if not any(part.startswith(".") for part in path.relative_to(folder).parts) and path.is_file()
    )
    if skipped is not None:
        skipped += [path for path in files if path.suffix.lower() not in SUFFIXES]
    return [path for path in files if path.suffix.lower() in SUFFIXES]


def say_skipped(skipped: Sequence[Path]) -> None:
    """One line (rank 0's) on the files a scan of folders left out: how many, of which kinds. None, no line."""
    if not skipped:
        return
    kinds = Counter(path.suffix.lower() or "without a suffix" for path in skipped)
    listed = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), key=lambda item: (-item[1], item[0])))
    files = "1 file that is not an image" if len(skipped) == 1 else f"{len(skipped)} files that are not images"
    rank_zero_info(f"Skipped {files} proj reads: {listed} (readable suffixes: {', '.join(SUFFIXES)}).")


def read_gray(source: Source) -> Tensor:
    """The image as grayscale (H, W) floats in [0, 1]; colour, alpha, bit depth and EXIF rotation dealt with.

    A transparent background (a canvas drawing) is filled with the shade that contrasts with what is drawn
    on it. Images with a side above MAX_SIDE are reduced (JPEGs decode at the reduced size directly).
    A file that is no readable image raises UserError.
    """
    with _opened(source) as image:
        if not isinstance(source, Image.Image):  # a caller's image stays as it is
            image.draft(None, (MAX_SIDE, MAX_SIDE))  # JPEG: decode at 1/2..1/8 scale
        return _gray(image)


@contextmanager
def _opened(source: Source) -> Iterator[Image.Image]:
    """The image (a file opened, or a PIL image as given); Pillow's "bad file" errors become a UserError naming it
    (an open file by its `repr`)."""
    try:
        if isinstance(source, Image.Image):
            yield source
        else:
            with Image.open(source) as image:
                yield image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{source} is not a readable image ({reason}): repair or remove the file.") from err


def read_image(source: Source, channels: int, size: tuple[int, int] | None) -> Tensor:
    """The image as uint8 (C, H, W): grayscale (C = 1) or RGB (C = 3), resized to cover `size` (H, W) keeping its
    aspect ratio, then centre-cropped to it (`size` None: as it is). What ImageFolderDataModule trains on and
    `proj.predict` feeds. A file that is no readable image raises UserError naming it."""
    mode = "RGB" if channels == 3 else "L"
    with _opened(source) as image:
        if size is not None and not isinstance(source, Image.Image):  # a caller's image stays as it is
            image.draft(mode, (size[1], size[0]))  # JPEG: decode no larger than needed
        image = _deep_to_float(ImageOps.exif_transpose(image))
        if image.mode == "F":  # rounded to 8 bits (Pillow's own conversion truncates)
            image = Image.fromarray(np.asarray(image).round().clip(0, 255).astype(np.uint8))
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = ImageOps.fit(image, (size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    height, width = pixels.shape[:2]
    return pixels.reshape(height, width, channels).permute(2, 0, 1).contiguous()


def is_deep_gray(mode: str) -> bool:
    """Whether an image of this Pillow mode is 16- or 32-bit grayscale (which Pillow's "L" would clip at 255)."""
    return mode.startswith("I") or mode == "F"


def _deep_to_float(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grayscale image as mode "F" in [0, 255], scaled by its white: 65535 for 16 bits (a 16-bit PGM,
    which Pillow opens as "I", included), else its brightest pixel (at least 255). Any other image as it is."""
    if not is_deep_gray(image.mode):
        return image
    floats = np.asarray(image.convert("F"), dtype=np.float32)
    brightest = float(floats.max())
    sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and 255 < brightest <= 65535)
    white = 65535.0 if sixteen_bit else max(255.0, brightest)
    return Image.fromarray(floats * np.float32(255.0 / white))


def _gray(image: Image.Image) -> Tensor:
    image = _deep_to_float(ImageOps.exif_transpose(image))  # phone photos are stored sideways with a rotation tag
    if image.mode != "F":
        image = image.convert("RGBA" if image.has_transparency_data else "L")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0
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


def centre_digit(strokes: Tensor, size: tuple[int, int] = (FIELD, FIELD)) -> Tensor:
    """MNIST's geometry: crop to the sure ink's bounding box, scale its longer side to 20 px keeping the aspect
    ratio (anti-aliased), and place it in 28x28 with its centre of mass on pixel (14, 14). A field of another
    `size` (H, W) gets a box of the same share of its shorter side, and its own centre pixel."""
    height, width = size
    box = max(1, round(BOX * min(height, width) / FIELD))
    sure = strokes >= BOX_THRESHOLD
    rows, cols = sure.any(dim=1).nonzero()[:, 0], sure.any(dim=0).nonzero()[:, 0]
    crop = strokes[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = box / max(crop.shape)
    digit_size = [max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))]
    digit = TF.resize(crop[None], digit_size, antialias=True).clamp(0, 1)[0]
    mass = digit.sum()
    centre_y = (digit.sum(dim=1) * torch.arange(digit_size[0])).sum() / mass
    centre_x = (digit.sum(dim=0) * torch.arange(digit_size[1])).sum() / mass
    top, left = round(height // 2 - centre_y.item()), round(width // 2 - centre_x.item())
    # Negative padding crops: a digit whose mass sits at one end may lose a pixel or two there, as in MNIST.
    return F.pad(digit, (left, width - digit_size[1] - left, top, height - digit_size[0] - top))


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixels (C, H, W) in [0, 1] standardised per channel, (x - mean) / std: the data module's normalisation."""
    return TF.normalize(pixels.float(), list(mean), list(std))


def resolve_preprocess(preprocess: str, description: Mapping[str, Any]) -> Preprocess:
    """The preparation `preprocess` means for this data: "auto" is "digit" for digit models, else "resize"."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    if preprocess == "auto":
        return "digit" if description.get("digits") else "resize"
    return preprocess


def prepare(source: Source, description: Mapping[str, Any], preprocess: str = "auto") -> Tensor:
    """A file or PIL image as the normalised (C, H, W) input of a model trained on the `description`'s data
    (`ImageDataModule.description()`: input_shape, mean, std, digits); UserError for an unusable image.

    "digit": MNIST's construction above, for real images of any size and polarity (grayscale; replicated over
    the channels if the model has several). "resize": the channels converted, resized to cover the model's
    size and centre-cropped. "none": for images already of the model's size; only the channels converted
    (digit models: as grayscale, light on dark). "auto": "digit" for digit models, else "resize".
    """
    channels, height, width = (int(side) for side in description["input_shape"])
    method = resolve_preprocess(preprocess, description)
    if method == "digit":
        pixels = centre_digit(ink(read_gray(source)), (height, width))[None]
    elif method == "resize":
        pixels = read_image(source, channels, (height, width)).float() / 255
    else:
        digits = bool(description.get("digits"))
        pixels = read_gray(source)[None] if digits else read_image(source, channels, None).float() / 255
        if pixels.shape[1:] != (height, width):
            found, wanted = f"{pixels.shape[2]}x{pixels.shape[1]}", f"{width}x{height}"
            usual = resolve_preprocess("auto", description)
            raise UserError(f"image is {found}; preprocess 'none' takes {wanted} images only (use {usual!r})")
    return normalize(pixels.expand(channels, height, width), description["mean"], description["std"])
