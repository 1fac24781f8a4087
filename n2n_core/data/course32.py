"""`course32:DIR`: the course's own 32×32 files (docs/methods.md §10), loaded without running any code.

`DIR/train_data.pkl` holds two uint8 tensors N×3×32×32 (two corruptions of the same images, no
clean target) and `DIR/val_data.pkl` two more: the noisy inputs and their clean targets. Both are
opened with `torch.load(weights_only=True)`: a file whose pickle would run code is refused.

The pairs are *given*: no noise model is applied to them. Training reads them through `PairStream`,
which hands both draws to `Method.given_pair` (only N2N-style methods accept them)
and scoring goes through `evaluation.paired.PairedEvaluator` (noisy input given, psnr_uint8
against the clean file). The run's `--noise` is still recorded but does not describe this data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..seeding import derive_seed, make_generator

PREFIX = "course32:"
TRAIN_FILE, VAL_FILE = "train_data.pkl", "val_data.pkl"


def load_pair_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uint8 tensors (N, 3, H, W) of equal shape from a pickle of plain tensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; course32:DIR needs {TRAIN_FILE} and {VAL_FILE} in DIR")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses any global that is not a plain tensor type
        from ..train.checkpoint import weights_only_reason

        first = weights_only_reason(err)
        raise DataError(
            f"{path} was refused: it is not a pickle of plain tensors ({first}); only two uint8 "
            "tensors N×3×32×32 are accepted, and no code is run from these files"
        ) from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2
            and all(isinstance(t, torch.Tensor) for t in loaded)):
        raise DataError(f"{path} must hold two tensors (e.g. a tuple), got {type(loaded).__name__}")
    first, second = loaded
    for t in loaded:
        if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[1] != 3:
            raise DataError(f"{path}: expected uint8 tensors N×3×H×W, got {t.dtype} {tuple(t.shape)}")
    if first.shape != second.shape:
        raise DataError(f"{path}: the two tensors differ in shape ({tuple(first.shape)} vs {tuple(second.shape)})")
    return first.contiguous(), second.contiguous()


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return load_pair_file(Path(path))


def _load(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return load_pair_file(path)  # raises the clear error
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class Course32Set:
    """The course's validation pairs as an evaluation set (clean via load(), noisy via load_noisy())."""

    root: Path
    name: str = "course32"
    default_repeats: int = 1
    given_noisy = True  # the evaluator must not draw noise: see evaluation.paired

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.root / TRAIN_FILE, self.root / VAL_FILE)

    @property
    def sha256(self) -> tuple[None, ...]:
        return (None, None)

    def image_ids(self) -> list[str]:
        return [f"course32-{i:04d}" for i in range(len(self.load()))]

    def load(self) -> list[torch.Tensor]:
        """Clean validation images, uint8 (3, H, W)."""
        return list(_load(self.root / VAL_FILE)[1])

    def load_noisy(self) -> list[torch.Tensor]:
        """The given noisy validation inputs, uint8 (3, H, W), in the order of load()."""
        return list(_load(self.root / VAL_FILE)[0])

    def train_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _load(self.root / TRAIN_FILE)

    def pad_to(self) -> int:
        return 32 * -(-max(self.load()[0].shape[1:]) // 32)


def course32_set(name: str) -> Course32Set:
    """Course32Set for 'course32:DIR' (DIR must exist; the files are read on first use)."""
    root = Path(name[len(PREFIX):]).expanduser()
    if not root.is_dir():
        raise DataError(f"data set {name}: folder {root} does not exist; point course32: at the folder "
                        f"holding {TRAIN_FILE} and {VAL_FILE}")
    return Course32Set(root)


class PairStream:
    """Given noisy pairs in a seeded order, addressed by images seen like CropStream.

    `training_pair(method, images_seen, n, step, device)` hands the method the two draws of the
    pairs number images_seen … images_seen + n − 1 (float32 in [0, 1]) through `Method.given_pair`;
    the order is a permutation per epoch from (seed, epoch).
    """

    def __init__(self, first: torch.Tensor, second: torch.Tensor, patch_size: int, seed: int):
        if tuple(first.shape[2:]) != (patch_size, patch_size):
            raise ConfigError(f"course32 pairs are {first.shape[2]}×{first.shape[3]}; set "
                              f"train.patch_size={first.shape[2]}")
        self.first, self.second = first, second  # (N, 3, H, W) uint8 each
        self.seed = seed
        self._order_cache: tuple[int, torch.Tensor] | None = None

    def order(self, epoch: int) -> torch.Tensor:
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = make_generator(derive_seed(self.seed, "course32-order", epoch))
            self._order_cache = (epoch, torch.randperm(len(self.first), generator=rng))
        return self._order_cache[1]

    def indices(self, images_seen: int, batch_size: int) -> list[int]:
        index = []
        for counter in range(images_seen, images_seen + batch_size):
            epoch, position = divmod(counter, len(self.first))
            index.append(int(self.order(epoch)[position]))
        return index

    def training_pair(self, method, images_seen: int, batch_size: int, step, device):
        index = self.indices(images_seen, batch_size)
        first, second = (t[index].to(device, torch.float32).div_(255.0) for t in (self.first, self.second))
        return method.given_pair(first, second, step)
