"""Shared fixtures: `device`, `rng`, `data_dir`, and tiny synthetic images (arrays and PNG files).

N2N_DATA: the test runner (run_tests.sh) sets it; when it is unset and the shared copy of the data
sets sits beside the project (`<repo>/../shared/data`), it is pointed there before any test runs,
so subprocesses started by the CLI tests inherit it too.
"""

from __future__ import annotations

import os
import signal
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
# one core's share per test process (xdist worker or -n 0): `grid --jobs auto` runs one job at a time
# in the grid's own process, as the tests of stops and resumes expect; a test that wants a pool says so
os.environ.setdefault("N2N_CORES", "1")

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
_START_ENV = dict(os.environ)  # what a test's process starts from, before any test changes it


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


_EMPTY_STORE: list[Path] = []  # this process's template, made on first use


def empty_store(db: Path) -> str:
    """A SQLite MLflow store at `db` holding MLflow's empty schema and nothing else (no n2n-bench
    experiment: the command under test still creates and describes it); its sqlite:/// URI.

    What the first command on a fresh store would create, copied from one made once per test
    process: MLflow's ~100 schema migrations cost a fresh store 5-10 s. Tests about creating a
    store (test_concurrency.py's two grids on a fresh one, the half-migrated cases) do not use it.
    """
    import atexit
    import shutil
    import sqlite3
    import tempfile

    if not _EMPTY_STORE:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="n2n-empty-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()  # creates the schema
        _EMPTY_STORE.append(template)
    db = Path(db)
    assert not db.exists(), f"{db} exists already"
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(_EMPTY_STORE[0]) as source, sqlite3.connect(db) as target:
        source.backup(target)  # a consistent copy, whatever MLflow's connection to the template holds
    source.close()
    target.close()
    return f"sqlite:///{db}"


def start_mlflow_server(folder: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 (own process group), once /health answers; (process, URI).

    Its store `folder/server.db` starts as empty_store() unless it exists (a restarted server), and
    the server runs without MLflow's job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: a second
    process, for GenAI jobs, that no test uses): both only shorten the start, by tens of seconds
    on a loaded machine."""
    port = port or free_port()
    if not (folder / "server.db").exists():
        empty_store(folder / "server.db")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
            time.sleep(0.2)
    os.killpg(proc.pid, 9)
    pytest.fail("mlflow server did not start within 120 s")


# ----------------------------------------------------------------------------- command lines, started fast

# A process that imports torch, MLflow and the CLI once, then forks one child per command line it is
# sent: each child is a new process (its own pid, signals, exit status, files) that runs the code
# as `python -c CODE ARGS...` would, with the imports already done, which otherwise cost every
# command 5-30 s (a loaded machine). The server has no thread (checked), so forking it is safe; its
# children are reaped at once and their exit statuses sent back.
ZYGOTE = r"""
import importlib, json, os, select, signal, sys, threading
before = dict(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}  # e.g. MLFLOW_* defaults
threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]


def reply(**message):
    os.write(1, (json.dumps(message) + "\n").encode())


def serve():
    # fork a child per request line and reply its pid; reply each child's exit code once reaped;
    # returns the request in the child; exits once the test process closes the pipe
    pending = b""
    while True:
        readable = select.select([0], [], [], 0.02)[0]
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply(pid=pid, code=os.waitstatus_to_exitcode(status))
        if not readable:
            continue
        chunk = os.read(0, 1 << 20)
        if not chunk:
            os._exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return request
            reply(id=request["id"], pid=pid)


reply(ready=True, threads=threads)
request = serve()
# the child: the environment, working directory, standard streams and arguments of its command line
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
for key, value in set_by_imports.items():  # as the imports of a fresh process would set them
    os.environ.setdefault(key, value)
if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS", "").isdigit():
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch reads it at import
appended = os.O_WRONLY | os.O_APPEND | os.O_CREAT
for fd, (path, flags) in enumerate([(os.devnull, os.O_RDONLY), (request["stdout"], appended),
                                    (request["stderr"], appended)]):
    opened = os.open(path, flags, 0o644)
    os.dup2(opened, fd)
    os.close(opened)
# SIGINT at its default, as in a terminal (a job a non-interactive shell starts in the background
# would inherit it ignored, and Python keeps it so): the command gets Ctrl-C as a terminal delivers it
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["-c", *request["args"]]
code = compile(request["code"], "<string>", "exec")
del request
exec(code, sys.modules["__main__"].__dict__)
"""
# what the commands of the tests import; a module left out is imported by the child itself
ZYGOTE_PRELOAD = ["torch", "torch._dynamo", "mlflow", "mlflow.store.tracking.sqlalchemy_store",
                  "mlflow.tracking", "benchmarks.cli", "benchmarks.grid", "benchmarks.jobs", "benchmarks.scoring",
                  "benchmarks.report", "n2n_core.train.trainer"]
# the command line itself, as the n2n-bench script runs it
CLI = "import sys\nfrom benchmarks.cli import main\nsys.argv = ['n2n-bench', *sys.argv[1:]]\nmain()\n"


class Forked:
    """subprocess.Popen's handle (pid, poll, wait, send_signal, kill, communicate) on a command
    forked by the zygote; returncode is -N for a process ended by signal N, as Popen has it."""

    def __init__(self, zygote: "_Zygote", stdout: str):
        self.zygote, self.stdout_path = zygote, stdout
        self.pid: int | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            self.zygote.read(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this process's
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, None]:
        self.wait(timeout)
        return (None if self.stdout_path == os.devnull else Path(self.stdout_path).read_text()), None


class _Zygote:
    def __init__(self):
        import atexit
        import tempfile

        self.log = Path(tempfile.mkstemp(prefix="n2n-zygote-", suffix=".log")[1])
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, *ZYGOTE_PRELOAD], cwd=REPO, env=_START_ENV,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        atexit.register(self.close)
        self.pending, self.ids, self.by_pid, self.ready = b"", iter(range(1 << 62)), {}, None
        self.starting: dict[int, Forked] = {}
        deadline = time.monotonic() + 300
        while self.ready is None:
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"the zygote did not start within 300 s: {self.log.read_text()[-3000:]}")
            self.read(1)
        assert self.ready == [], f"the zygote runs threads, so forking it is unsafe: {self.ready}"

    def read(self, timeout: float) -> None:
        """Take in what the zygote sent within `timeout` seconds: pids of new children, exit codes."""
        import json
        import select

        out = self.proc.stdout.fileno()
        while select.select([out], [], [], max(timeout, 0))[0]:
            chunk = os.read(out, 1 << 16)
            if not chunk:
                pytest.fail(f"the zygote exited ({self.proc.wait()}): {self.log.read_text()[-3000:]}")
            self.pending += chunk
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                message = json.loads(line)
                if "ready" in message:
                    self.ready = message["threads"]
                elif "id" in message:  # a pid is reused only after its last owner's exit code came
                    forked = self.starting.pop(message["id"])
                    forked.pid = message["pid"]
                    self.by_pid[forked.pid] = forked
                elif message["pid"] in self.by_pid:
                    self.by_pid.pop(message["pid"]).returncode = message["code"]
            timeout = 0

    def start(self, code: str, args: list, env: dict, cwd: Path, stdout: str, stderr: str) -> Forked:
        import json

        for path in (stdout, stderr):  # the child opens them after it reports its pid: a caller may read them at once
            if path != os.devnull:
                Path(path).touch()
        forked, key = Forked(self, stdout), next(self.ids)
        self.starting[key] = forked
        request = {"id": key, "code": code, "args": [str(a) for a in args], "env": {k: str(v) for k, v in env.items()},
                   "cwd": str(cwd), "stdout": stdout, "stderr": stderr}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + 60
        while forked.pid is None:
            if time.monotonic() > deadline:
                pytest.fail(f"the zygote forked nothing within 60 s: {self.log.read_text()[-3000:]}")
            self.read(0.5)
        return forked

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the zygote exits; children still running carry on
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.unlink(missing_ok=True)


_ZYGOTE: list[_Zygote] = []


def start_command(code: str, args: list, env: dict | None = None, cwd: Path = REPO,
                  stdout: Path | str = os.devnull, stderr: Path | str = os.devnull) -> Forked:
    """Run `python -c code *args` in a new process forked from this test process's zygote (started
    on first use), with `env` (default: this process's) and stdout/stderr appended to the given
    files; a Popen-like handle. The first call waits for the zygote's imports."""
    if not _ZYGOTE:
        _ZYGOTE.append(_Zygote())
    return _ZYGOTE[0].start(code, args, dict(os.environ) if env is None else env, cwd, str(stdout), str(stderr))


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


@pytest.fixture
def grid_postfixes(monkeypatch) -> list[str]:
    """The texts the grid's progress bar shows beside its count (benchmarks.grid.tqdm replaced by a
    recorder), in order: which jobs are running, and how far each has trained."""
    import benchmarks.grid as grid

    shown: list[str] = []

    class Bar:
        def __init__(self, *args, total=0, **kwargs):
            self.total = total

        def update(self, n=1):
            pass

        def set_postfix_str(self, text, refresh=True):
            shown.append(text)

        def refresh(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(grid, "tqdm", Bar)
    return shown
