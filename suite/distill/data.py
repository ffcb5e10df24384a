"""Images for distillation: a folder, or real photographs shipped inside installed packages.

Nothing is downloaded. The default set is the photographs inside the scikit-image wheel
(``skimage/data``: astronaut, coffee, chelsea, rocket, ...) plus scikit-learn's two sample
photographs when installed; grayscale ones are repeated to RGB.

Crops are a pure function of ``(seed, epoch, index)`` (a per-sample ``torch.Generator``), so a
run is reproducible with any number of loader workers and a resumed run sees exactly the batches
it would have seen: the data position is just ``(epoch, batch in epoch)``. Batches come from a
:class:`~torch.utils.data.DistributedSampler` (one replica without torchrun), so the union of
the ranks' batches at step ``s`` is the single-process batch of the same global size.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from suite.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# Real photographs in the scikit-image wheel (no pooch download needed for these); the synthetic
# images and document scans it also ships (color wheel, page, text) are left out.
SKIMAGE_PHOTOS = (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "grass.png",
    "gravel.png", "brick.png", "clock_motion.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MEAN, STD = 0.5, 0.5  # SigLIP normalization: pixels to [-1, 1]


def _package_files(package: str, subdir: str, names: tuple[str, ...]) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0]) / subdir
    return [root / n for n in names if (root / n).is_file()]


def builtin_image_paths() -> list[Path]:
    """Photographs shipped by scikit-image (and scikit-learn, if installed)."""
    paths = _package_files("skimage", "data", SKIMAGE_PHOTOS) + _package_files("sklearn", "datasets/images", SKLEARN_PHOTOS)
    if not paths:
        raise FileNotFoundError(
            "data.path is not set and no bundled photographs were found: install scikit-image "
            "(pip install 'cgspn-bench[distill]' or pip install scikit-image), or set data.path to an image folder"
        )
    return paths


def folder_image_paths(path: str | Path) -> list[Path]:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: {root} is not a directory")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return paths


class ImageError(InputError):
    """An image file that cannot be decoded; names the file."""


def load_image(path: Path, max_side: int) -> torch.Tensor:
    """uint8 ``(3, H, W)``; downscaled (antialiased) so that the short side is at most ``max_side``."""
    try:
        return _decode(path, max_side)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image, truncated, too large
        raise ImageError(f"data: cannot read image {path}: {exc}; remove it or replace it") from None


def _decode(path: Path, max_side: int) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        short = min(im.size)
        if short > max_side:
            scale = max_side / short
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.view(im.height, im.width, 3).permute(2, 0, 1).contiguous()


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in ``scale`` and aspect in ``ratio``
    (torchvision's RandomResizedCrop sampling, drawn from ``g``); center crop as fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(u[3] * (width - w + 1))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def to_model_input(crop: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``(3, h, w)`` -> float32 ``(3, r, r)`` in [-1, 1], antialiased bilinear resize."""
    x = crop.unsqueeze(0).float().div_(255.0)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.squeeze(0).sub_(MEAN).div_(STD)


class CropDataset(Dataset):
    """``len(paths) * repeats`` random resized crops per epoch; indexed by ``(epoch, index)``."""

    def __init__(self, paths: list[Path], resolution: int, *, seed: int, repeats: int = 1,
                 scale: tuple[float, float] = (0.35, 1.0), ratio: tuple[float, float] = (0.75, 4 / 3),
                 max_side: int = 640, cache_limit: int = 256):
        self.paths = list(paths)
        self.resolution = resolution
        self.seed = seed
        self.repeats = repeats
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.max_side = max_side
        # Small sets are decoded once; large folders are decoded per sample to bound memory.
        self._cache: dict[int, torch.Tensor] | None = {} if len(self.paths) <= cache_limit else None

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def image(self, i: int) -> torch.Tensor:
        if self._cache is None:
            return load_image(self.paths[i], self.max_side)
        if i not in self._cache:
            self._cache[i] = load_image(self.paths[i], self.max_side)
        return self._cache[i]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
        img = self.image(index % len(self.paths))
        top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], self.scale, self.ratio, g)
        crop = img[:, top:top + h, left:left + w]
        if torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        return to_model_input(crop, self.resolution)


class CenterCropDataset(Dataset):
    """Deterministic evaluation inputs: the largest centered square of each image."""

    def __init__(self, paths: list[Path], resolution: int, max_side: int = 640):
        self.paths = list(paths)
        self.resolution = resolution
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = load_image(self.paths[index], self.max_side)
        side = min(img.shape[1:])
        top, left = (img.shape[1] - side) // 2, (img.shape[2] - side) // 2
        return to_model_input(img[:, top:top + side, left:left + side], self.resolution)


class EpochBatches:
    """Per-rank batches of one epoch from a DistributedSampler, skipping ``start`` batches (resume)."""

    def __init__(self, sampler: DistributedSampler, epoch: int, batch: int, start: int = 0):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        count = len(indices) // batch
        self.batches = [[(epoch, i) for i in indices[b * batch:(b + 1) * batch]] for b in range(start, count)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamIndices:
    """Batch sampler for one DataLoader over many epochs: per-rank batches from ``start``
    (``(epoch, batch in epoch)``) on, epoch after epoch (one loader per stage, so loader workers
    are not restarted at every epoch of a small image set)."""

    def __init__(self, sampler: DistributedSampler, batch: int, start: tuple[int, int]):
        self.sampler, self.batch, self.start = sampler, batch, start

    def __iter__(self):
        epoch, offset = self.start
        while True:
            yield from EpochBatches(self.sampler, epoch, self.batch, offset)
            epoch, offset = epoch + 1, 0


class BatchStream:
    """Endless stream of ``(B_local, 3, r, r)`` batches with a resumable position.

    ``position`` is ``(epoch, batch in epoch)`` of the next batch; with the batch count per
    epoch fixed it is a function of the steps taken, and a checkpoint stores it.
    """

    def __init__(self, dataset: CropDataset, *, rank: int, world: int, global_batch: int, seed: int,
                 workers: int = 0, position: tuple[int, int] = (0, 0), pin_memory: bool = False):
        if global_batch % world:
            raise ValueError(f"data.batch_size: {global_batch} is not divisible by the {world} DDP ranks")
        self.local_batch = global_batch // world
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.per_epoch = len(sampler) // self.local_batch
        if self.per_epoch == 0:
            raise ValueError(
                f"data.batch_size: {global_batch} exceeds the {len(dataset)} crops of one epoch; "
                "lower it or raise data.repeats"
            )
        self.epoch, self.offset = position
        if self.offset >= self.per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0
        indices = StreamIndices(sampler, self.local_batch, (self.epoch, self.offset))
        self._iter = iter(DataLoader(dataset, batch_sampler=indices, num_workers=workers, pin_memory=pin_memory))

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.offset

    def next(self) -> torch.Tensor:
        batch = next(self._iter)
        self.offset += 1
        if self.offset == self.per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0
        return batch
