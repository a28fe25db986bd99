"""Printed digits (in the spirit of SynDigits): the ten digits drawn with Pillow from the fonts matplotlib
ships, each with seeded jitter, then framed as MNIST frames a handwritten digit."""
from __future__ import annotations

import functools

import numpy as np

from .sources import font_files

RENDER = 64  # font size (px) the glyphs are drawn at, before they are fitted to MNIST's 20 x 20 box
CANVAS = 28
# jitter, one independent uniform draw per image (ranges inclusive; pixels are those of the 28 x 28 canvas)
BOX = (14, 20)          # the longer side of the digit's bounding box, px (MNIST: 20)
DEGREES = (-10, 10)     # rotation, counter-clockwise
SHIFT = 2               # translation after centring, px in each axis, integer in [-2, 2]
STROKE = (0, 3)         # extra stroke width at the render size, integer px (0..3 of 64: regular to heavy)
BLUR = (0.0, 0.8)       # Gaussian blur radius, px


@functools.lru_cache(maxsize=None)
def _font(path: str):
    from PIL import ImageFont
    return ImageFont.truetype(path, RENDER)


def _glyph(path: str, digit: int, stroke: int):
    """The digit drawn white on black at the render size, with `stroke` px of extra outline, cropped to its ink."""
    from PIL import Image, ImageDraw
    img = Image.new("L", (2 * RENDER, 2 * RENDER), 0)
    ImageDraw.Draw(img).text((RENDER // 2, RENDER // 4), str(digit), fill=255, font=_font(path),
                             stroke_width=stroke, stroke_fill=255)
    return img.crop(img.getbbox())


def frame_like_mnist(img, box: int, shift=(0, 0)) -> np.ndarray:
    """MNIST's framing: crop to the ink, scale (anti-aliased, aspect kept) so the longer side is `box` px,
    paste into a 28 x 28 canvas with the ink's centre of mass at the canvas centre, then move by `shift`
    (dy, dx) px. Returns uint8 (28, 28)."""
    from PIL import Image
    img = img.crop(img.getbbox())
    scale = box / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    a = np.asarray(img, dtype=np.float64)
    ys, xs = np.indices(a.shape)
    cy, cx = (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()
    centre = CANVAS / 2  # where MNIST's centres of mass lie (mean 14.0 in row and column index, measured)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(img, (round(centre - cx) + int(shift[1]), round(centre - cy) + int(shift[0])))
    return np.asarray(canvas)


def printed_digits(labels: np.ndarray, seed: int) -> np.ndarray:
    """One printed image per label: float32 (n, 28, 28) in [0, 1]. Each image draws (seeded, independently):
    a font of sources.FONTS, an extra stroke width, a rotation, the box size, a translation and a blur."""
    from PIL import Image, ImageFilter
    fonts = font_files()
    n = len(labels)
    rng = np.random.default_rng(seed)
    font = rng.integers(len(fonts), size=n)
    stroke = rng.integers(STROKE[0], STROKE[1] + 1, size=n)
    degrees = rng.uniform(*DEGREES, size=n)
    box = rng.integers(BOX[0], BOX[1] + 1, size=n)
    shift = rng.integers(-SHIFT, SHIFT + 1, size=(n, 2))
    blur = rng.uniform(*BLUR, size=n)
    glyph = functools.lru_cache(maxsize=None)(_glyph)
    out = np.empty((n, CANVAS, CANVAS), dtype=np.float32)
    for i in range(n):
        img = glyph(fonts[font[i]], int(labels[i]), int(stroke[i]))
        img = img.rotate(degrees[i], resample=Image.BILINEAR, expand=True)
        img = Image.fromarray(frame_like_mnist(img, int(box[i]), shift[i]))
        out[i] = np.asarray(img.filter(ImageFilter.GaussianBlur(float(blur[i])))) / 255.0
    return out
