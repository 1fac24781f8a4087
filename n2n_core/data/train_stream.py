"""The training crop stream of docs/methods.md §2, addressed by the number of images seen.

Order: a permutation of the training images per epoch, drawn from (seed, epoch), so images are
sampled without replacement and reshuffled when exhausted. Each image gets one uniformly random
crop whose position is drawn from (seed, image counter). Because everything is derived from the
count of images seen, the stream has no state: a resumed run asks for `batch(images_seen, n)` and
gets exactly what an uninterrupted run would have got.

Images smaller than the crop are first extended by reflect padding (numpy mode "reflect", repeated as needed) at bottom/right to
the crop size, the same way evaluation pads; the paper's ImageNet filter (sides >= 256) makes this
case empty for its own set.

Fixed noise (train.noise_draw="fixed"): realisation k of (padded) image i is drawn once, on the
CPU, as noise.sample(image i as float (1, C, H, W), generator of derive_seed(seed, "fixed-noise",
i, k)), and a crop's noisy pixels are cut from it at the clean crop's position. The method gets
them through `Step.noisy` (methods/base.py): its first call returns realisation 0, its second
realisation 1 (N2N's pair). A realisation is a function of (seed, i, k), so the stream stays
stateless; a few are cached (FIXED_CACHE_BYTES) only to save redrawing them.

noisy:SET (NoisyImageStream): the images are the evaluator's noisy inputs of SET; realisation 0 is
the image itself, and the method's `clean` argument is a NaN placeholder: no clean pixel exists here.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import torch

from ..errors import N2NError
from ..noise import NoiseModel, NoisyBatch
from ..seeding import derive_seed, make_generator

FIXED_CACHE_BYTES = 512 * 2**20
"""Noisy whole images kept for reuse under fixed noise (least recently used first out); 512 MiB
holds bsd300-train's 200 images once (~370 MB as float32). A set too large for it (ImageNet)
redraws a whole image per crop: small beside a CPU training step, not beside a fast GPU's
(benchmarks/perf/README.md, "Measurements behind other choices")."""


def pad_reflect(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad (C, H, W) at bottom/right to at least (height, width); works for any pad size."""
    c, h, w = image.shape
    if h >= height and w >= width:
        return image
    array = np.pad(
        image.numpy(), ((0, 0), (0, max(0, height - h)), (0, max(0, width - w))), mode="reflect"
    )
    return torch.from_numpy(array)


def cut(image: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """The size×size window of (C, H, W) at (top, left)."""
    return image[:, top : top + size, left : left + size]


class CropStream:
    """Random square crops (float32 in [0, 1]) from a list of uint8 (C, H, W) images.

    `fixed_noise`: the run's noise model under train.noise_draw="fixed"; None: fresh noise, drawn
    by the method from step.noise as before."""

    def __init__(self, images: list[torch.Tensor], patch_size: int, seed: int,
                 fixed_noise: NoiseModel | None = None):
        if not images:
            raise ValueError("CropStream needs at least one image")
        self.images = [pad_reflect(img, patch_size, patch_size) for img in images]
        self.patch_size = patch_size
        self.seed = seed
        self.fixed_noise = fixed_noise
        self._order_cache: tuple[int, list[int]] | None = None
        self._realisations: OrderedDict[tuple[int, int], NoisyBatch] = OrderedDict()
        self._cached_bytes = 0

    @property
    def fixed(self) -> bool:
        """Whether crops carry fixed noisy realisations (Step.noisy hands them out)."""
        return self.fixed_noise is not None

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

    def crop_box(self, counter: int) -> tuple[int, int, int]:
        """(image index, top, left) of the `counter`-th crop: where it is cut, whatever from."""
        index = self.image_index(counter)
        _, h, w = self.images[index].shape
        rng = make_generator(derive_seed(self.seed, "train-crop", counter))
        top = int(torch.randint(h - self.patch_size + 1, (1,), generator=rng))
        left = int(torch.randint(w - self.patch_size + 1, (1,), generator=rng))
        return index, top, left

    def crop(self, counter: int) -> torch.Tensor:
        """The uint8 crop (C, P, P) for the `counter`-th image drawn."""
        index, top, left = self.crop_box(counter)
        return cut(self.images[index], top, left, self.patch_size)

    def batch(self, images_seen: int, batch_size: int) -> torch.Tensor:
        """Crops number images_seen … images_seen + batch_size − 1 as float32 (B, C, P, P) in [0, 1]."""
        crops = torch.stack([self.crop(images_seen + i) for i in range(batch_size)])
        return crops.to(torch.float32).div_(255.0)

    def draw_realisation(self, index: int, k: int) -> NoisyBatch:
        """Noisy realisation k of whole (padded) image `index`, (1, C, H, W), and its level (1,):
        a function of (seed, index, k) alone, drawn on the CPU whatever device trains."""
        whole = self.images[index].to(torch.float32).div(255.0)[None]
        return self.fixed_noise.sample(whole, make_generator(derive_seed(self.seed, "fixed-noise", index, k)))

    def realisation(self, index: int, k: int) -> NoisyBatch:
        """draw_realisation, kept in a least-recently-used cache of FIXED_CACHE_BYTES."""
        key = (index, k)
        if key in self._realisations:
            self._realisations.move_to_end(key)
            return self._realisations[key]
        drawn = self.draw_realisation(index, k)
        self._realisations[key] = drawn
        self._cached_bytes += drawn.noisy.nbytes
        while self._cached_bytes > FIXED_CACHE_BYTES and len(self._realisations) > 1:
            self._cached_bytes -= self._realisations.popitem(last=False)[1].noisy.nbytes
        return drawn

    def training_pair(self, method, images_seen: int, batch_size: int, step, device):
        """The method's training pair for the next batch of clean crops, moved to `device`; under
        fixed noise the step carries the batch's fixed noisy crops (FixedCrops, Step.noisy)."""
        clean = self.batch(images_seen, batch_size).to(device, non_blocking=True)
        if not self.fixed:
            return method.training_pair(clean, step)
        boxes = [self.crop_box(images_seen + i) for i in range(batch_size)]
        crops = FixedCrops(self, boxes, clean)
        pair = method.training_pair(clean, dataclasses.replace(step, fixed=crops))
        crops.require_drawn(method)
        return pair


class FixedCrops:
    """One batch's fixed noisy crops, handed out by `Step.noisy`: realisation 0 on the first call,
    1 on the second, cut at the clean crops' positions from the stream's whole noisy images."""

    def __init__(self, stream: CropStream, boxes: list[tuple[int, int, int]], clean: torch.Tensor):
        self.stream, self.boxes, self.clean = stream, boxes, clean
        self.drawn = 0  # realisations handed out so far

    def next(self, clean: torch.Tensor) -> NoisyBatch:
        """The batch's next realisation, on `clean`'s device and dtype."""
        # the very tensor the stream handed the method: comparing values would cost a pass over
        # the batch (and a host sync on CUDA) every step
        if clean is not self.clean:
            raise N2NError("step.noisy got crops that are not the batch's (changed before the draw?); under "
                           "fixed noise draw first with step.noisy(self.noise, clean), then transform the result")
        k, size = self.drawn, self.stream.patch_size
        self.drawn += 1
        drawn = [self.stream.realisation(index, k) for index, _, _ in self.boxes]
        noisy = torch.stack([cut(r.noisy[0], top, left, size) for r, (_, top, left) in zip(drawn, self.boxes)])
        level = torch.cat([r.level for r in drawn])
        return NoisyBatch(noisy.to(clean.device, clean.dtype), level.to(clean.device))

    def require_drawn(self, method) -> None:
        """A method that drew its noise elsewhere (self.noise.sample) trained on fresh noise: refuse it."""
        if self.drawn == 0:
            raise N2NError(f"method {method.config.name} drew no noise through step.noisy; under "
                           "train.noise_draw=\"fixed\" and on noisy: sets its training_pair must take its noisy "
                           "crops from step.noisy(self.noise, clean) instead of self.noise.sample")


class NoisyImageStream(CropStream):
    """Crops of given noisy images (noisy:SET): realisation 0 is the image; there is no clean image,
    so the method's `clean` argument is a NaN placeholder of the crops' shape."""

    def __init__(self, noisy: list[tuple[torch.Tensor, torch.Tensor]], patch_size: int, seed: int, name: str):
        super().__init__([image for image, _ in noisy], patch_size, seed)
        self.levels = [level.reshape(1) for _, level in noisy]
        self.name = name

    @property
    def fixed(self) -> bool:
        return True

    def batch(self, images_seen: int, batch_size: int) -> torch.Tensor:
        c = self.images[0].shape[0]
        return torch.full((batch_size, c, self.patch_size, self.patch_size), float("nan"))

    def draw_realisation(self, index: int, k: int) -> NoisyBatch:
        if k > 0:
            raise N2NError(f"{self.name} holds one noisy realisation per image, and the method asked for a "
                           "second; declare noisy_draws = 2 on it (configuration then refuses it here) and "
                           "train it on a set of clean images")
        return NoisyBatch(self.images[index][None], self.levels[index])

    def realisation(self, index: int, k: int) -> NoisyBatch:
        return self.draw_realisation(index, k)  # already in memory: nothing to cache


def stream_for(image_set, patch_size: int, seed: int, noise: NoiseModel | None = None,
               noise_draw: str = "fresh", evaluation=None):
    """The training stream of a resolved set: random crops, with fixed noise when noise_draw is
    "fixed"; crops of the evaluator's noisy inputs for noisy:SET (`evaluation`: the run's
    EvalConfig, whose seed, center_crop and max_images pick those inputs); or the given noisy pairs
    of a set that brings them (course32:DIR, whose PairStream hands both draws to `Method.given_pair`)."""
    if hasattr(image_set, "train_pairs"):
        from .course32 import PairStream

        return PairStream(*image_set.train_pairs(), patch_size, seed)
    if hasattr(image_set, "noisy_images"):
        if noise is None or evaluation is None:
            raise ValueError(f"{image_set.name} needs the run's noise model and eval section")
        noisy = image_set.noisy_images(noise, evaluation.seed, evaluation.center_crop, evaluation.max_images)
        return NoisyImageStream(noisy, patch_size, seed, image_set.name)
    if noise_draw == "fixed" and noise is None:
        raise ValueError("fixed noise needs the run's noise model")
    return CropStream(image_set.load(), patch_size, seed, fixed_noise=noise if noise_draw == "fixed" else None)
