"""FixMatch's RandAugment: the strong view of FixMatch-style methods (CPE's), for PIL images and uint8 tensors.

As USB's `semilearn/datasets/augmentation/randaugment.py` (the code CPE, machengcheng2016/CPE-LTSSL, builds on;
`RandAugment(3, 5)` in its CIFAR transforms): per image, 3 operations drawn with replacement from 14, each at a
magnitude drawn uniformly from the operation's own range (FixMatch's variant: the `m` argument is unused),
then Cutout of a square of side up to half the image's width, filled with grey (125, 123, 114). It runs after
the crop and flip, before normalisation.

The operations are torchvision's functional ones, which take a PIL image or a uint8 tensor alike: on PIL images
they are PIL's own operations, and the affine ones are written so that they equal USB's `img.transform(AFFINE)`
and `img.rotate` pixel for pixel (tests/test_cpe.py); on tensors they are torchvision's tensor versions, which
round differently (the colour operations; in the affine ones, a nearest-neighbour sample halfway between two
pixels), as the harness's two image paths do (bench/data.py). Two details are adapted: Solarize's threshold
above 255 leaves the image as it is (no uint8 pixel reaches it; torchvision refuses it on tensors), and Cutout's
centre is drawn uniformly over the image (USB's `np.random.uniform(w)` draws it from (1, w]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

# (name, low, high): USB's augment_list(), in its order
OPS = (("autocontrast", 0, 1), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95), ("contrast", 0.05, 0.95),
       ("equalize", 0, 1), ("identity", 0, 1), ("posterize", 4, 8), ("rotate", -30, 30), ("sharpness", 0.05, 0.95),
       ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("solarize", 0, 256), ("translate_x", -0.3, 0.3),
       ("translate_y", -0.3, 0.3))
NUM_OPS = 3  # RandAugment(3, 5) in USB's CIFAR transforms
CUTOUT_MAX = 0.5  # Cutout's side: uniform in [0, 0.5) of the image's width
CUTOUT_FILL = (125, 123, 114)


@dataclass(frozen=True)
class Draw:
    """One image's random choices: operation indices into OPS, their magnitudes as fractions of each range, and
    Cutout's side (a fraction of the width) and centre (fractions of the width and height)."""

    ops: tuple[int, ...]
    levels: tuple[float, ...]
    cutout: tuple[float, float, float]


def draws(count: int, generator: torch.Generator | None = None) -> list[Draw]:
    """`count` images' choices, from `generator` (None: torch's global generator, as torchvision's transforms)."""
    ops = torch.randint(len(OPS), (count, NUM_OPS), generator=generator).tolist()
    levels = torch.rand(count, NUM_OPS, generator=generator).tolist()
    cutout = torch.rand(count, 3, generator=generator).tolist()
    return [Draw(tuple(o), tuple(v), (c[0] * CUTOUT_MAX, c[1], c[2])) for o, v, c in zip(ops, levels, cutout,
                                                                                           strict=True)]


def _size(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(width, height)."""
    return image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])


def _affine(image, translate: tuple[float, float] = (0.0, 0.0), shear: tuple[float, float] = (0.0, 0.0)):
    """PIL's `transform(AFFINE, (1, sx, tx, sy, 1, ty))`: the output pixel (x, y) reads the input at
    (x + sx·y + tx, sy·x + y + ty), nearest neighbour, zero fill."""
    degrees = [math.degrees(math.atan(s)) for s in shear]
    return TF.affine(image, angle=0.0, translate=[-translate[0], -translate[1]], scale=1.0, shear=degrees,
                     center=[0, 0])


def apply_op(image, name: str, value: float):
    """One of USB's operations at `value` (in the operation's own range)."""
    width, height = _size(image)
    if name == "identity" or (name == "solarize" and value > 255):
        return image
    simple = {"autocontrast": TF.autocontrast, "equalize": TF.equalize}
    if name in simple:
        return simple[name](image)
    enhance = {"brightness": TF.adjust_brightness, "color": TF.adjust_saturation, "contrast": TF.adjust_contrast,
               "sharpness": TF.adjust_sharpness}
    if name in enhance:
        return enhance[name](image, value)
    if name == "posterize":
        return TF.posterize(image, max(1, int(value)))
    if name == "solarize":
        return TF.solarize(image, value)
    if name == "rotate":
        return TF.rotate(image, value)
    affine = {"shear_x": {"shear": (value, 0.0)}, "shear_y": {"shear": (0.0, value)},
              "translate_x": {"translate": (value * width, 0.0)}, "translate_y": {"translate": (0.0, value * height)}}
    return _affine(image, **affine[name])


def cutout(image, side: float, cx: float, cy: float):
    """USB's CutoutAbs: a grey square of `side` (a fraction of the width) around (cx, cy) (fractions of the
    width and height), clipped to the image; nothing for a side of 0."""
    width, height = _size(image)
    side *= width
    if side <= 0:
        return image
    left, top = int(max(0.0, cx * width - side / 2)), int(max(0.0, cy * height - side / 2))
    right, bottom = int(min(width, left + side)), int(min(height, top + side))
    if isinstance(image, Image.Image):
        image = image.copy()
        ImageDraw.Draw(image).rectangle((left, top, right, bottom), CUTOUT_FILL)  # PIL's corners are inclusive
        return image
    image = image.clone()
    image[:, top:bottom + 1, left:right + 1] = torch.tensor(CUTOUT_FILL, dtype=image.dtype,
                                                            device=image.device).view(3, 1, 1)
    return image


def rand_augment(image, draw: Draw):
    """`draw`'s operations and Cutout on one RGB image: PIL, or a uint8 tensor [3, H, W] (the harness's images
    are RGB: bench.datasets.base)."""
    for index, level in zip(draw.ops, draw.levels, strict=True):
        name, low, high = OPS[index]
        image = apply_op(image, name, low + (high - low) * level)
    return cutout(image, *draw.cutout)


class RandAugment:
    """The PIL pipeline's step (bench.data.Transform.pil): draws from torch's global generator, so the harness's
    views of one image (one per tower) get the same choices."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return rand_augment(image, draws(1)[0])

    def __repr__(self) -> str:
        return f"FixMatchRandAugment(ops={NUM_OPS}, cutout={CUTOUT_MAX})"
