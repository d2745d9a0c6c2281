"""The two ways images reach a model: uint8 pixels with tensor transforms, and PIL image by image; each
filter and resize mode on both; views of the same images for several towers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import write_image
from PIL import Image
from rich.console import Console

from bench.data import INTERPOLATIONS, ImageFeed, Preprocessing, Transform, chunks, rrc_boxes
from bench.datasets.base import ArrayImages, FileImages, Split
from bench.pixel_cache import SMALL_IMAGE_SIDE, split_pixels

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
PLAIN = Preprocessing(MEAN, STD)


def noise(count: int, side: int = 32, seed: int = 0, width: int | None = None) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, width or side, 3), dtype=np.uint8)


def to_pixels(x: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Normalised images back to 0..255 values."""
    std, mean = (torch.tensor(v).view(1, -1, 1, 1) * 255 for v in (transform.preprocessing.std, transform.preprocessing.mean))
    return x * std + mean


def assert_paths_agree(images: np.ndarray, transform: Transform) -> None:
    tensor_path = transform.batch(torch.from_numpy(images), None)
    pil_path = torch.stack([transform.pil()(Image.fromarray(image)) for image in images])
    difference = (to_pixels(tensor_path, transform) - to_pixels(pil_path, transform)).abs()
    assert tensor_path.shape == (len(images), 3, transform.size, transform.size)
    assert difference.max() <= 2.01
    assert difference.mean() < 0.05


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("size", [16, 24, 48, 112])
def test_eval_transform_on_tensors_matches_pil(size, interpolation):
    """Noise is the worst case for interpolation differences: up- and downscaled, bicubic and bilinear, they
    stay within 2 of 255."""
    assert_paths_agree(noise(6), Transform(size, Preprocessing(MEAN, STD, interpolation)))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("height, width", [(24, 40), (40, 24)])
def test_shortest_side_resize_keeps_the_aspect_on_both_paths(height, width, interpolation):
    """open_clip's eval: the shorter side resized to the size (no margin), the aspect kept, the centre cropped."""
    transform = Transform(16, Preprocessing(MEAN, STD, interpolation, "shortest", crop_fraction=1.0))
    assert transform.eval_resized(height, width) == ((16, 26) if height < width else (26, 16))
    assert "Resize(size=16," in transform.describe(False)  # torchvision's shortest-side form (an int)
    assert_paths_agree(noise(6, height, width=width), transform)


def test_crop_flip_crops_the_padded_resized_image():
    """Without resizing (size = image side), every output is a size×size window of the reflect-padded image,
    possibly mirrored."""
    images = noise(8, side=16)
    transform = Transform(16, Preprocessing((0.0,) * 3, (1 / 255,) * 3), "crop_flip", hflip=True)
    out = transform.batch(torch.from_numpy(images), torch.Generator().manual_seed(3)).round().to(torch.uint8)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for image, crop in zip(padded, out.permute(0, 2, 3, 1).numpy(), strict=True):
        windows = [image[t:t + 16, s:s + 16] for t in range(5) for s in range(5)]
        assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)


def test_random_resized_crop_boxes_follow_torchvision_ranges():
    boxes = rrc_boxes(32, 40, 2000, torch.Generator().manual_seed(0))
    top, left, h, w = (np.array(v) for v in zip(*boxes, strict=True))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    area = h * w / (32 * 40)
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert (w / h).min() >= 3 / 4 * 0.8 and (w / h).max() <= 4 / 3 * 1.25  # rounding of small boxes
    assert len(set(boxes)) > 1000  # random, not one box


def test_augmentation_is_fixed_by_the_seed_and_varies_with_it():
    feed = ImageFeed(Split("train", ArrayImages(noise(10), "noise"), np.arange(10) % 2),
                     torch.from_numpy(noise(10)), torch.device("cpu"), 0)
    transform = Transform(24, PLAIN, "rrc_flip", hflip=True)
    batches = chunks(range(10), 4)

    def epoch(seed):
        return torch.cat([x for x, _ in feed.batches(transform, batches, seed)])

    assert torch.equal(epoch(1), epoch(1))
    assert not torch.equal(epoch(1), epoch(2))
    labels = torch.cat([y for _, y in feed.batches(transform, batches, 1)])
    assert labels.tolist() == [i % 2 for i in range(10)]


def test_both_feeds_give_the_same_eval_batches(tmp_path):
    images = noise(5, side=12)
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    split = Split("test", FileImages(tmp_path, tuple(paths)), np.arange(5))
    transform = Transform(20, PLAIN)
    cached = ImageFeed(split, torch.from_numpy(images), torch.device("cpu"), 0)
    per_image = ImageFeed(split, None, torch.device("cpu"), 0)
    (a, ya), = cached.batches(transform, [list(range(5))], 0)
    (b, yb), = per_image.batches(transform, [list(range(5))], 0)
    assert torch.equal(ya, yb)
    assert (to_pixels(a, transform) - to_pixels(b, transform)).abs().max() <= 2.01
    assert cached.describe(transform) != per_image.describe(transform)  # caches keyed by the path


@pytest.mark.parametrize("augment", ["rrc_flip", "crop_flip"])
def test_views_for_several_towers_share_crops_and_flips_on_both_paths(tmp_path, augment):
    """A tuple of transforms gives one view per tower, each in its own preprocessing, all from the same random
    crops and flips: a tower that differs only by normalisation sees exactly the same pixels."""
    images = noise(6, side=24, width=20)
    paths = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    split = Split("train", FileImages(tmp_path, tuple(paths)), np.arange(6))
    first = Transform(16, PLAIN, augment, hflip=True)
    renormalised = Transform(16, Preprocessing((0.2, 0.3, 0.4), (0.5, 0.5, 0.5)), augment, hflip=True)
    bilinear = Transform(16, Preprocessing(MEAN, STD, "bilinear"), augment, hflip=True)
    for pixels in (torch.from_numpy(images), None):
        feed = ImageFeed(split, pixels, torch.device("cpu"), 0)
        torch.manual_seed(0)  # the PIL path draws from torch's global generator
        (views, _), = feed.batches((first, renormalised, bilinear, first), [list(range(6))], 3)
        a, b, c, again = (to_pixels(view, transform) for view, transform in
                          zip(views, (first, renormalised, bilinear, first), strict=True))
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
        assert torch.equal(a, again)
        assert 0 < (a - c).abs().mean() < 20  # another filter over the same crops: close, not equal
        torch.manual_seed(0)
        (alone, _), = feed.batches(first, [list(range(6))], 3)
        assert torch.equal(alone, views[0])  # a view is the transform's own batch


def test_pixel_cache_decodes_small_images_once(tmp_path):
    paths = [write_image(tmp_path / "img" / f"{i}.png", seed=i, size=8).relative_to(tmp_path).as_posix()
             for i in range(4)]
    split = Split("train", FileImages(tmp_path, tuple(paths)), np.zeros(4))
    warnings = []
    pixels, how = split_pixels(split, tmp_path / "cache", Console(quiet=True), warnings.append)
    assert pixels.shape == (4, 8, 8, 3) and pixels.dtype == torch.uint8 and "decoded now" in how
    assert np.array_equal(pixels[2].numpy(), np.asarray(Image.open(tmp_path / paths[2]).convert("RGB")))
    again, how = split_pixels(split, tmp_path / "cache", Console(quiet=True), warnings.append)
    assert torch.equal(again, pixels) and "decoded now" not in how and not warnings
    shutil.copytree(tmp_path / "img", tmp_path / "copy" / "img")  # the same split in another folder
    other = Split("train", FileImages(tmp_path / "copy", tuple(paths)), np.zeros(4))
    assert "decoded now" in split_pixels(other, tmp_path / "cache", Console(quiet=True), warnings.append)[1]


def test_pixel_cache_refuses_mixed_or_large_images(tmp_path):
    small = [write_image(tmp_path / f"s{i}.png", seed=i, size=8).name for i in range(3)]
    odd = write_image(tmp_path / "odd.png", size=9).name
    big = write_image(tmp_path / "big.png", size=SMALL_IMAGE_SIDE + 1).name
    warnings = []
    console = Console(quiet=True)
    # an odd image after the probed ones: found while decoding, said, nothing cached
    mixed = Split("train", FileImages(tmp_path, tuple(small * 6 + [odd])), np.zeros(19))
    pixels, how = split_pixels(mixed, tmp_path / "cache", console, warnings.append)
    assert pixels is None and "odd.png is 9×9, not 8×8" in how and "odd.png" in warnings[0]
    assert not list((tmp_path / "cache").rglob("*.pt"))
    pixels, how = split_pixels(Split("train", FileImages(tmp_path, (big,)), np.zeros(1)), tmp_path / "cache",
                               console, warnings.append)
    assert pixels is None and f"sides ≤ {SMALL_IMAGE_SIDE}" in how


def test_grey_arrays_become_rgb():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    pixels, how = split_pixels(Split("train", ArrayImages(grey, "grey"), np.zeros(2)), None, Console(quiet=True),
                               print)
    assert pixels.shape == (2, 4, 4, 3) and "in memory" in how
    assert np.array_equal(pixels[1].numpy(), np.asarray(Image.fromarray(grey[1]).convert("RGB")))
