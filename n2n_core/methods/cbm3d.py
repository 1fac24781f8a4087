"""CBM3D: the training-free colour BM3D baseline (docs/methods.md §7), run from the `bm3d` package.

What is run
    `bm3d.bm3d_rgb(z, sigma, profile, colorspace)` on each evaluation image cropped back to its
    original (height, width): bm3d never sees the reflect padding the evaluator adds (§8). z is the
    unclipped noisy image on the [0, 1] scale and sigma the known noise standard deviation on the
    same scale. `profile` and `colour_space` are configuration options and so part of the run's
    recorded configuration and hash.

Gaussian noise
    sigma = the level the noise model drew for that image (gaussian25: 25/255).

Poisson noise (y = Poisson(λx)/λ)
    A variance-stabilising transform, denoising at unit variance, and the exact unbiased inverse:

    1. counts z = λ·y, which are Poisson(λx);
    2. forward Anscombe transform D = 2·sqrt(z + 3/8) (the generalised Anscombe transform with gain 1
       and no Gaussian component, i.e. pure Poisson); D has variance ≈ 1 for every rate ≳ 4;
    3. D is mapped affinely to [0, 1] by its own range, t = (D − min D)/(max D − min D), and bm3d is
       called with sigma = 1/(max D − min D) — the unit standard deviation divided by the same
       range — so z and sigma are on the [0, 1] scale as for Gaussian noise; the result is mapped
       back with the same affine map (bm3d_rgb also normalises internally, so this choice does not
       change what bm3d computes; it keeps both noise kinds on one calling convention);
    4. the closed-form approximation of the exact unbiased inverse of Mäkitalo & Foi (IEEE TIP
       20(9), 2011): I(D) = ¼D² + ¼√(3/2)·D⁻¹ − 11/8·D⁻² + 5/8·√(3/2)·D⁻³ − 1/8, which maps
       E[f(z) | rate] back to the rate (the algebraic inverse (D/2)² − 3/8 is biased at low counts).
       I is 0 exactly at D = 2·sqrt(3/8) (the transform of a zero count) and is set to 0 below it;
    5. divide by λ.

Impulse noise and greyscale data (data.channels=1) are refused at configuration time: BM3D models
additive Gaussian noise only, and bm3d_rgb takes RGB images. A greyscale picture given as RGB
(three equal channels, as `n2n-bench denoise` passes a grey file) goes through bm3d's
single-channel `bm3d.bm3d` with the same sigma: bm3d_rgb's colour transform would divide by the
zero range of its chroma channels and return NaN.

Parallelism and determinism
    Images are independent, so `denoise_many` runs them in a pool of worker processes
    (`forkserver` start method, `spawn` where there is none: workers fork from a clean server
    that imported this module and bm3d once, so no torch or bm4d thread state is inherited). The pool
    has `workers` processes (default: the usable cores — CPU affinity, capped by a cgroup quota)
    and each worker limits BLAS/OpenMP/torch threads to cores // workers so the pool does not
    oversubscribe the machine. bm4d's own C++ thread pool (profile.num_threads) is always 1:
    with more threads its aggregation order changes and outputs differ in the last bits
    (measured: up to 2e-6 on kodim01), so a single-threaded bm3d is what makes results identical
    for any pool size. A pool of one runs in this process (no start-up cost).

Cache
    With `cache_dir` set, every finished image is stored as `<sha256>.npy` (float32 (3, h, w),
    written to a temporary file and moved into place with os.replace, read with
    allow_pickle=False). The key hashes the exact noisy crop bytes that bm3d would see (which
    pins image, noise seed and level), the image id and repeat, noise kind and level, the
    installed bm3d and bm4d versions and the options. A cached result is returned without
    running bm3d, so an interrupted evaluation resumes where it stopped and rebuilding a table
    costs nothing. `workers` and `cache_dir` change how results are obtained, never what they
    are, so they are excluded from the configuration's serialisation and hash.

Licence: bm3d is for non-commercial use only; it is a registry dependency (pyproject.toml) and
none of its files are copied here.

Why one long module: this one method needs the whole BM3D pipeline (import guard, Anscombe
transform, a deterministic worker pool and its sizing, the result cache); this docstring is its spec.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import multiprocessing
import os
import io
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError, N2NError, NoiseNotSupported, first_line
from ..noise import NoiseModel, NoisyBatch
from ..train.checkpoint import atomic_write
from .base import Method, MethodConfigBase, refuse_impulse

BM3D_PIN = "bm3d==4.0.3"
CACHE_FORMAT = "cbm3d-cache-v1"
# bm3d's profile names (bm3d.profiles); 'lc' has a class but no string name in bm3d, so profiles
# are always passed as objects. 'deb' is the profile of bm3d's deblurring routine.
PROFILES = ("np", "refilter", "vn", "vn_old", "high", "lc", "deb")
Profile = Literal["np", "refilter", "vn", "vn_old", "high", "lc", "deb"]
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS")


class CBM3DConfig(MethodConfigBase):
    name: Literal["cbm3d"] = "cbm3d"
    profile: Profile = "np"
    """bm3d parameter profile (bm3d.profiles): np (default), refilter, vn, vn_old, high, lc, deb."""
    colour_space: Literal["opp", "YCbCr"] = "opp"
    """Colour transform bm3d_rgb matches blocks in: opp (opponent, default) or YCbCr."""
    workers: int | None = Field(None, gt=0, exclude=True)
    """Worker processes (None: the usable cores). Not part of the run's hash: results are identical."""
    cache_dir: str | None = Field(None, exclude=True)
    """Folder of finished per-image results (None: no cache). Not part of the run's hash."""

    def options(self) -> dict[str, str]:
        """What, besides the noisy input and its level, decides the output."""
        return {"profile": self.profile, "colour_space": self.colour_space}


# --- bm3d import -------------------------------------------------------------------------------


def import_bm3d():
    """The bm3d module, or one N2NError saying how to install it."""
    try:
        return importlib.import_module("bm3d")
    except Exception as err:  # ImportError, or e.g. an OSError loading bm4d's shared library
        reason = f"{type(err).__name__}: {first_line(err)}"
        raise N2NError(
            f"bm3d is not installed or failed to import ({reason}); install it with "
            f"`pip install {BM3D_PIN}` (non-commercial licence)"
        ) from None


def bm3d_versions() -> str:
    """Installed bm3d and bm4d (the engine bm3d calls) versions, for the cache key."""
    parts = []
    for dist in ("bm3d", "bm4d"):
        try:
            parts.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}==unknown")
    return ",".join(parts)


def make_profile(bm3d, name: str):
    """A fresh bm3d profile object for `name`, single-threaded (see the module docstring)."""
    profiles = bm3d.profiles
    classes = {
        "np": profiles.BM3DProfile, "refilter": profiles.BM3DProfileRefilter,
        "vn": profiles.BM3DProfileVN, "vn_old": profiles.BM3DProfileVNOld,
        "high": profiles.BM3DProfileHigh, "lc": profiles.BM3DProfileLC,
        "deb": profiles.BM3DProfileDeb,
    }
    profile = classes[name]()
    profile.num_threads = 1
    return profile


# --- Anscombe transform (pure Poisson) -----------------------------------------------------------

ANSCOMBE_ZERO = 2.0 * math.sqrt(3.0 / 8.0)  # transform of a zero count; the inverse is 0 there
_R = math.sqrt(1.5)


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Forward Anscombe transform 2·sqrt(z + 3/8) of Poisson counts (variance ≈ 1)."""
    return 2.0 * np.sqrt(np.maximum(np.asarray(counts, dtype=np.float64) + 0.375, 0.0))


def inverse_anscombe_unbiased(d: np.ndarray) -> np.ndarray:
    """Closed-form exact unbiased inverse (Mäkitalo & Foi 2011): E[anscombe(z)] → rate of z.

    I(D) = ¼D² + ¼√(3/2)D⁻¹ − 11/8 D⁻² + 5/8 √(3/2) D⁻³ − 1/8 for D above 2·sqrt(3/8), else 0.
    """
    d = np.asarray(d, dtype=np.float64)
    s = np.maximum(d, ANSCOMBE_ZERO)
    inv = 0.25 * s**2 + 0.25 * _R / s - 1.375 / s**2 + 0.625 * _R / s**3 - 0.125
    return np.where(d > ANSCOMBE_ZERO, np.maximum(inv, 0.0), 0.0)


# --- one image -----------------------------------------------------------------------------------


def denoise_array(z: np.ndarray, kind: str, level: float, profile: str = "np",
                  colour_space: str = "opp") -> np.ndarray:
    """CBM3D of one noisy (h, w, 3) image on the [0, 1] scale; float32 (h, w, 3)."""
    bm3d = import_bm3d()
    prof = make_profile(bm3d, profile)
    z = np.asarray(z, dtype=np.float64)
    if kind == "gaussian":
        out = _bm3d_colour_or_grey(bm3d, z, float(level), prof, colour_space)
    elif kind == "poisson":
        lam = float(level)
        d = anscombe(lam * z)
        low, span = float(d.min()), max(float(d.max() - d.min()), 1e-12)
        t = _bm3d_colour_or_grey(bm3d, (d - low) / span, 1.0 / span, prof, colour_space)
        out = inverse_anscombe_unbiased(np.asarray(t) * span + low) / lam
    else:
        raise ConfigError(f"cbm3d cannot model {kind} noise")
    return np.asarray(out, dtype=np.float32)


def _bm3d_colour_or_grey(bm3d, z: np.ndarray, sigma: float, prof, colour_space: str) -> np.ndarray:
    """bm3d_rgb of an (h, w, 3) image; a grey picture given as three equal channels goes through
    bm3d's single-channel bm3d() instead, its result copied into the three channels: bm3d_rgb
    divides each transformed channel by its range, which is zero for a grey picture's chroma
    channels, and returns NaN (an all-black output once quantised)."""
    if np.array_equal(z[..., 0], z[..., 1]) and np.array_equal(z[..., 0], z[..., 2]):
        grey = np.asarray(bm3d.bm3d(z[..., 0], sigma, profile=prof)).reshape(z.shape[:2])
        return np.repeat(grey[..., None], 3, axis=2)
    return bm3d.bm3d_rgb(z, sigma, profile=prof, colorspace=colour_space)


def _bm3d_job(z: np.ndarray, kind: str, level: float, profile: str, colour_space: str) -> np.ndarray:
    """Pool task: (h, w, 3) noisy → (3, h, w) float32 denoised."""
    return np.ascontiguousarray(denoise_array(z, kind, level, profile, colour_space).transpose(2, 0, 1))


_LIMITS = None  # keeps the worker's threadpool limits alive


def _init_worker(threads: int) -> None:
    """Pool initializer: threads per worker for BLAS/OpenMP/torch (bm4d's own pool is always 1)."""
    global _LIMITS
    for var in THREAD_ENV:
        os.environ[var] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        _LIMITS = threadpool_limits(limits=threads)
    except ImportError:  # env vars above still cover libraries loaded later
        pass
    torch.set_num_threads(threads)


def _pool_context():
    """forkserver where available: workers fork from one clean server process that has imported
    this module and bm3d once (no torch or bm4d threads to inherit, no per-worker import cost);
    spawn elsewhere. The server outlives the pool, so later pools start in milliseconds."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "bm3d"])
        return ctx
    return multiprocessing.get_context("spawn")


# --- pool sizing ---------------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 CPU quota when one is set
    and by $N2N_CORES, the share a parallel grid gives each of its jobs (benchmarks/jobs.py)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    if os.environ.get("N2N_CORES", "").isdigit():
        cores = min(cores, int(os.environ["N2N_CORES"]))
    return max(1, cores)


def pool_plan(workers: int | None, jobs: int, cores: int | None = None) -> tuple[int, int]:
    """(processes, threads per process): never more processes than jobs, workers × threads ≤ cores."""
    cores = cores or usable_cores()
    processes = max(1, min(workers or cores, jobs))
    return processes, max(1, cores // processes)


# --- cache ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    z: np.ndarray  # (h, w, 3) float32 noisy crop, what bm3d sees
    kind: str
    level: float
    key: str


class ResultCache:
    """Folder of `<sha256>.npy` results; unreadable or mismatched files are recomputed."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.float32 or arr.shape != shape:
            return None
        return arr

    def store(self, key: str, arr: np.ndarray) -> None:
        """Write atomically (checkpoint.atomic_write: temporary file, fsync, os.replace); a full
        disk is a one-line StorageError and leaves no partial file."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise N2NError(f"cannot write the CBM3D cache folder {self.folder} ({err}); "
                           "set method.cache_dir to a writable folder") from None
        atomic_write(self.path(key), lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def cache_key(z: np.ndarray, image_id: str, repeat: int, kind: str, level: float,
              options: dict, versions: str) -> str:
    """sha256 of everything that decides the output, including the exact noisy input bytes."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    header = json.dumps({
        "format": CACHE_FORMAT, "image_id": str(image_id), "repeat": int(repeat), "noise": kind,
        "level": float(level), "versions": versions, "options": options,
        "shape": list(z.shape), "dtype": "float32",
    }, sort_keys=True)
    h = hashlib.sha256(header.encode())
    h.update(b"\0")
    h.update(z.tobytes())
    return h.hexdigest()


# --- the method ----------------------------------------------------------------------------------


class CBM3D(Method):
    """Colour BM3D with the known noise level; Poisson through the Anscombe transform."""

    Config = CBM3DConfig
    trainable: ClassVar[bool] = False
    eval_chunk: ClassVar[int] = 64  # the evaluator hands this many inputs to one denoise_many call

    config: CBM3DConfig

    @classmethod
    def check(cls, config, noise, train, evaluation, data):
        refuse_impulse("cbm3d", noise, "BM3D is a Gaussian denoiser (Poisson goes through the Anscombe transform)")
        if data.channels != 3:
            raise NoiseNotSupported(
                f"cbm3d runs colour BM3D (bm3d_rgb) on RGB images only, not data.channels={data.channels}; "
                "use data.channels=3 (the paper has no greyscale CBM3D cell)"
            )

    @classmethod
    def with_cache_dir(cls, config, folder):
        """Finished images are cached under `folder` unless the run names its own cache_dir."""
        return config if config.cache_dir is not None else config.model_copy(update={"cache_dir": folder})

    def __init__(self, config: CBM3DConfig, noise: NoiseModel, channels: int = 3):
        super().__init__(config, noise, channels)
        import_bm3d()  # fail now, in one line, rather than inside a worker
        self.versions = bm3d_versions()
        self.cache = ResultCache(config.cache_dir) if config.cache_dir else None

    def build_model(self, rng=None) -> None:
        return None

    def _run_one(self, z: np.ndarray, kind: str, level: float) -> np.ndarray:
        return _bm3d_job(z, kind, level, self.config.profile, self.config.colour_space)

    def denoise(self, model, batch: NoisyBatch) -> torch.Tensor:
        """(N, 3, H, W) → (N, 3, H, W), image by image in this process (whole tensors, no cache)."""
        noisy = batch.noisy.detach().float().cpu().numpy()
        levels = batch.level.detach().cpu().reshape(-1).tolist()
        out = [self._run_one(noisy[n].transpose(1, 2, 0), self.noise.kind, levels[n])
               for n in range(len(noisy))]
        return torch.from_numpy(np.stack(out)).to(batch.noisy.device)

    def _job(self, item) -> _Job:
        h, w = int(item.height), int(item.width)
        z = np.ascontiguousarray(item.noisy.noisy[0, :, :h, :w].detach().float().cpu().numpy()
                                 .transpose(1, 2, 0))
        level = float(item.noisy.level.reshape(-1)[0])
        key = cache_key(z, item.image_id, item.repeat, self.noise.kind, level,
                        self.config.options(), self.versions)
        return _Job(z, self.noise.kind, level, key)

    def denoise_many(self, model, inputs: Sequence, device: torch.device) -> list[torch.Tensor]:
        """Each input's (height, width) crop through bm3d, cached, in a process pool; input order."""
        jobs = [self._job(item) for item in inputs]
        results: list[np.ndarray | None] = [None] * len(jobs)
        todo = []
        for i, job in enumerate(jobs):
            if self.cache is not None:
                results[i] = self.cache.load(job.key, (3, *job.z.shape[:2]))
            if results[i] is None:
                todo.append(i)
        if todo:
            processes, threads = pool_plan(self.config.workers, len(todo))
            run = self._run_serial if processes == 1 else self._run_pool
            for i, arr in run([jobs[i] for i in todo], todo, processes, threads):
                if self.cache is not None:
                    self.cache.store(jobs[i].key, arr)
                results[i] = arr
        return [torch.from_numpy(arr) for arr in results]

    def _run_serial(self, jobs, indices, processes, threads):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            threadpool_limits = None
        for i, job in zip(indices, jobs):
            if threadpool_limits is None:
                arr = self._run_one(job.z, job.kind, job.level)
            else:
                with threadpool_limits(limits=threads):
                    arr = self._run_one(job.z, job.kind, job.level)
            yield i, arr

    def _run_pool(self, jobs, indices, processes, threads):
        """Yield (index, result) as images finish, so each is cached as soon as it is done."""
        pool = ProcessPoolExecutor(processes, mp_context=_pool_context(),
                                   initializer=_init_worker, initargs=(threads,))
        try:
            # largest images first: a big image started last would leave the other workers idle
            order = sorted(range(len(jobs)), key=lambda k: -jobs[k].z.size)
            pending = {
                pool.submit(_bm3d_job, jobs[k].z, jobs[k].kind, jobs[k].level,
                            self.config.profile, self.config.colour_space): indices[k]
                for k in order
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    index = pending.pop(fut)
                    yield index, fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
