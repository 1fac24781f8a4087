"""The training crop stream of docs/methods.md §2, addressed by the number of images seen.

Order: a permutation of the training images per epoch, drawn from (seed, epoch), so images are
sampled without replacement and reshuffled when exhausted. Each image gets one uniformly random
crop whose position is drawn from (seed, image counter). Because everything is derived from the
count of images seen, the stream has no state: a resumed run asks for `batch(images_seen, n)` and
gets exactly what an uninterrupted run would have got.

Images smaller than the crop are first extended by reflect padding (numpy mode "reflect", repeated as needed) at bottom/right to
the crop size, the same way evaluation pads; the paper's ImageNet filter (sides >= 256) makes this
case empty for its own set.
"""

from __future__ import annotations

import numpy as np
import torch

from ..seeding import derive_seed, make_generator


def pad_reflect(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad (C, H, W) at bottom/right to at least (height, width); works for any pad size."""
    c, h, w = image.shape
    if h >= height and w >= width:
        return image
    array = np.pad(
        image.numpy(), ((0, 0), (0, max(0, height - h)), (0, max(0, width - w))), mode="reflect"
    )
    return torch.from_numpy(array)


class CropStream:
    """Random square crops (float32 in [0, 1]) from a list of uint8 (C, H, W) images."""

    def __init__(self, images: list[torch.Tensor], patch_size: int, seed: int):
        if not images:
            raise ValueError("CropStream needs at least one image")
        self.images = [pad_reflect(img, patch_size, patch_size) for img in images]
        self.patch_size = patch_size
        self.seed = seed
        self._order_cache: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        """The shuffled image order of one pass over the set."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = make_generator(derive_seed(self.seed, "train-order", epoch))
            self._order_cache = (epoch, torch.randperm(len(self.images), generator=rng).tolist())
        return self._order_cache[1]

    def image_index(self, counter: int) -> int:
        """Which image the `counter`-th image drawn (0-based, over the whole run) is."""
        epoch, position = divmod(counter, len(self.images))
        return self.order(epoch)[position]

    def crop(self, counter: int) -> torch.Tensor:
        """The uint8 crop (C, P, P) for the `counter`-th image drawn."""
        image = self.images[self.image_index(counter)]
        _, h, w = image.shape
        rng = make_generator(derive_seed(self.seed, "train-crop", counter))
        top = int(torch.randint(h - self.patch_size + 1, (1,), generator=rng))
        left = int(torch.randint(w - self.patch_size + 1, (1,), generator=rng))
        return image[:, top : top + self.patch_size, left : left + self.patch_size]

    def batch(self, images_seen: int, batch_size: int) -> torch.Tensor:
        """Crops number images_seen … images_seen + batch_size − 1 as float32 (B, C, P, P) in [0, 1]."""
        crops = torch.stack([self.crop(images_seen + i) for i in range(batch_size)])
        return crops.to(torch.float32).div_(255.0)

    def training_pair(self, method, images_seen: int, batch_size: int, step, device):
        """The method's training pair for the next batch of clean crops, moved to `device`."""
        clean = self.batch(images_seen, batch_size).to(device, non_blocking=True)
        return method.training_pair(clean, step)


def stream_for(image_set, patch_size: int, seed: int):
    """The training stream of a resolved set: random crops, or the given noisy pairs of a set that
    brings them (course32:DIR, whose PairStream hands both draws to `Method.given_pair`)."""
    if hasattr(image_set, "train_pairs"):
        from .course32 import PairStream

        return PairStream(*image_set.train_pairs(), patch_size, seed)
    return CropStream(image_set.load(), patch_size, seed)
