"""Shared fixtures: `device`, `rng`, `data_dir`, and tiny synthetic images (arrays and PNG files).

N2N_DATA: the test runner (run_tests.sh) sets it; when it is unset and the shared copy of the data
sets sits beside the project (`<repo>/../shared/data`), it is pointed there before any test runs,
so subprocesses started by the CLI tests inherit it too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in two worker processes (pyproject addopts -n 2): one thread each, set before
    # torch starts its pool, so two workers do not oversubscribe two cores; the CLI subprocesses a
    # test starts inherit it, so a test's in-process and subprocess runs reduce in the same order
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_SHARED_DATA = REPO.parent / "shared" / "data"

if not os.environ.get("N2N_DATA") and _SHARED_DATA.is_dir():
    os.environ["N2N_DATA"] = str(_SHARED_DATA.resolve())
# `n2n-bench train` logs to the project's MLflow store by default; a test that wants a store asks
# for one with --track and its own --tracking-uri, so no test writes to the project's mlflow.db
os.environ.setdefault("N2N_TRACK", "0")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def rng() -> torch.Generator:
    """A CPU generator seeded with 0 (noise is drawn on the CPU in the evaluation protocol)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data directory ($N2N_DATA); without one the tests that need real sets fail, not skip."""
    env = os.environ.get("N2N_DATA")
    if not env or not (Path(env) / "kodak24").is_dir():
        pytest.fail("no data directory with kodak24: set N2N_DATA or run ./run_tests.sh (scripts/data_dir.sh)")
    return Path(env)


def synthetic_uint8(n: int, height: int, width: int, seed: int = 0, channels: int = 3) -> list[np.ndarray]:
    """n random uint8 images (H, W, C) (or (H, W) when channels == 1), every one different."""
    generator = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return [generator.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write a uint8 array as PNG with PIL (mode inferred from the shape unless given)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.fixture
def tiny_images() -> Callable[..., list[torch.Tensor]]:
    """Factory: tiny_images(n, h, w, seed) → n distinct random uint8 (3, H, W) tensors."""

    def make(n: int = 4, height: int = 16, width: int = 16, seed: int = 0) -> list[torch.Tensor]:
        arrays = synthetic_uint8(n, height, width, seed)
        return [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]

    return make


@pytest.fixture
def png_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: png_folder(sizes, seed, name) writes random RGB PNGs of the given (h, w) sizes.

    Files are named img00.png, img01.png, … in the order of `sizes`; returns the folder.
    """

    def make(sizes=((24, 32), (32, 20)), seed: int = 0, name: str = "pngs") -> Path:
        folder = tmp_path / name
        for i, (h, w) in enumerate(sizes):
            save_png(folder / f"img{i:02d}.png", synthetic_uint8(1, h, w, seed + i)[0])
        return folder

    return make



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 (own process group), once /health answers; (process, URI)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(1)
    os.killpg(proc.pid, 9)
    pytest.fail("mlflow server did not start within 120 s")


# The files that wait longest on servers, subprocesses and whole smoke grids (measured with
# --durations), run first: pytest-xdist hands files to its workers in collection order, so the
# longest start at once and the short ones fill the gaps, instead of one long file running alone
# at the end.
LONGEST_FIRST = ["test_hardening.py", "test_concurrency.py", "test_runner.py", "test_ray_grid.py",
                 "test_blindspot_scale.py", "test_distributed.py", "test_cli_ux.py", "test_cli_evaluate.py",
                 "test_methods_contract.py", "test_hardening_round2.py", "test_course.py", "test_cli_train.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(Path(str(item.fspath)).name, len(rank)), order[id(item)]))
