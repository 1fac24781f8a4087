"""Check the MLflow UI in a real browser: screenshots of the runs table and the compare view.

    .venv/bin/python benchmarks/mlflow_screenshots.py                 # a fresh smoke store
    .venv/bin/python benchmarks/mlflow_screenshots.py --store sqlite:////abs/mlflow.db

Starts `mlflow ui` on 127.0.0.1 (a free port) over the store, opens it in headless Chromium
(Debian's `chromium` package, installed with apt-get when missing) driven through the DevTools
protocol (aiohttp's websocket client, already a pinned dependency), and writes
results/figures/mlflow-runs.png and results/figures/mlflow-compare.png. Without --store it first
runs a smoke grid (noisy, n2c, n2n, ssdn-known; tiny budgets) into a temporary store.

The runs table's columns are a per-browser choice in MLflow (kept in the browser's localStorage,
not in the store), so a store cannot make PSNR a default column; the script chooses the columns a
newcomer needs (psnr_<set>, variant, noise, profile), sorts by PSNR and expands the grid's runs
before the screenshot, as a user would with the table's Columns menu. The experiment's description
says the same (benchmarks/mlflow_tracker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from n2n_core.train.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WINDOW = (1800, 1100)


def ensure_chromium() -> str:
    """The chromium binary; installs Debian's package (as root) when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("error: chromium is missing; install it with: sudo apt-get install -y chromium")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "fonts-dejavu-core"],
                   check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("chromium") or sys.exit("error: chromium did not install")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_store(folder: Path) -> str:
    """A small store made by the real CLI: a smoke grid of four variants with tiny budgets."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tiny = ["train.budget_images=16", "train.patch_size=32", "train.validate_every_images=4",
            "eval.max_images=1", "eval.center_crop=64"]
    subprocess.run([str(BIN / "n2n-bench"), "grid", "--noise", "gaussian25", "--profile", "smoke",
                    "--methods", "noisy,n2c,n2n,ssdn-known", *[a for o in tiny for a in ("--set", o)],
                    "--tracking-uri", uri, "--runs-dir", str(folder / "runs"), "--out", str(folder / "results")],
                   check=True, cwd=ROOT)
    return uri


def start_ui(uri: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                sys.exit("error: mlflow ui exited at start")
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    sys.exit("error: mlflow ui did not answer within 180 s")


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def open(self, url: str, settle: float, ready: str = "true") -> None:
        """Navigate, then wait until `ready` (a JS expression) holds and the page settles."""
        await self.call("Page.navigate", url=url)
        deadline = time.time() + 120
        while time.time() < deadline and not await self.js(f"document.readyState === 'complete' && ({ready})"):
            await asyncio.sleep(1)
        await asyncio.sleep(settle)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        atomic_write(path, lambda tmp: tmp.write_bytes(png))
        print(f"wrote {path}")


# the assistant side panel opens on a first visit and hides the table's right-hand columns
CLOSE_PANELS = """
for (const b of document.querySelectorAll('button[aria-label="Close"]')) {
  if (b.closest('[class*="ssistant"], aside, [data-testid*="ssistant"]') || document.body.innerText.includes('MLflow Assistant')) { b.click(); break; }
}
true"""


# the compare view opens on a parallel-coordinates plot of the first params; collapsing it and the
# long parameter list brings the Metrics table (every psnr_<set> of every run) to the top
COLLAPSE_FOR_METRICS = """
for (const el of document.querySelectorAll('[role="button"]')) {
  if (['Visualizations', 'Parameters'].includes((el.innerText || '').trim())) el.click();
}
window.scrollTo(0, 0); true"""


# the metrics are listed by name: scroll the page until the first psnr_<set> row is mid-view
SHOW_ROW = """
const row = Array.from(document.querySelectorAll('a, td, div')).find(el => (el.innerText || '').trim() === METRIC);
// the page, not the table: the table's name column scrolls apart from its values
if (row) window.scrollTo(0, window.scrollY + row.getBoundingClientRect().top - window.innerHeight / 2); true"""


def table_state(state: dict, psnr_metrics: list[str], parents: list[str]) -> dict:
    """The runs table as a newcomer needs it: PSNR and the run's identity as columns, best first,
    the grid's runs expanded under their parent."""
    columns = [f"metrics.`{m}`" for m in psnr_metrics] + [f"tags.`{t}`" for t in ("variant", "noise", "profile")]
    return {**state, "selectedColumns": columns + ["attributes.`Models`"],
            "columnWidths": {**state.get("columnWidths", {}), **{c: 150 for c in columns}},
            "orderByKey": f"metrics.`{psnr_metrics[0]}`", "orderByAsc": False,
            "runsExpanded": {run_id: True for run_id in parents}}


async def capture(chromium: str, base: str, experiment_id: str, run_ids: list[str], parents: list[str],
                  psnr_metrics: list[str], out: Path) -> None:
    import aiohttp

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="n2n-chromium-") as profile:
        browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                    f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                                    f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            async with aiohttp.ClientSession() as session:
                targets = None
                for _ in range(60):
                    try:
                        targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
                        break
                    except aiohttp.ClientError:
                        await asyncio.sleep(1)
                target = next(t for t in targets or [] if t["type"] == "page")
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.call("Page.enable")
                    runs_url = f"{base}/#/experiments/{experiment_id}/runs"
                    await page.open(runs_url, settle=3, ready="document.body.innerText.includes('matching runs')")
                    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
                    state = json.loads(await page.js(f"localStorage.getItem({json.dumps(key)}) || '{{}}'"))
                    await page.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(table_state(state, psnr_metrics, parents)))});"
                                  "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); true")
                    await page.call("Page.reload", ignoreCache=True)  # the app reads the state at start
                    await asyncio.sleep(2)
                    await page.open(runs_url, settle=4, ready=f"document.body.innerText.includes({json.dumps(psnr_metrics[0])})")
                    await page.js(CLOSE_PANELS)
                    await asyncio.sleep(3)
                    await page.screenshot(out / "mlflow-runs.png")
                    compare = (f"{base}/#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}"
                               f"&experiments={json.dumps([experiment_id], separators=(',', ':'))}")
                    await page.open(compare, settle=4, ready=f"document.body.innerText.includes({json.dumps(psnr_metrics[0])})")
                    await page.js(CLOSE_PANELS + COLLAPSE_FOR_METRICS)
                    await asyncio.sleep(2)
                    await page.js(SHOW_ROW.replace("METRIC", json.dumps(psnr_metrics[0])))
                    await asyncio.sleep(3)
                    await page.screenshot(out / "mlflow-compare.png")
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="tracking URI of an existing store (default: make a smoke store)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "figures", help="folder for the PNGs")
    args = parser.parse_args()
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="n2n-shots-") as tmp:
        uri = args.store or smoke_store(Path(tmp))
        sys.path.insert(0, str(ROOT))
        from benchmarks.mlflow_tracker import open_store

        client, experiment_id = open_store(uri)
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=50)
        jobs = [r for r in runs if "variant" in r.data.tags]
        if not jobs:
            sys.exit(f"error: the store {uri} has no finished job runs; run a grid first")
        parents = sorted({r.data.tags["mlflow.parentRunId"] for r in jobs if "mlflow.parentRunId" in r.data.tags})
        psnr = sorted({k for r in jobs for k in r.data.metrics if k.startswith("psnr_")})
        port = free_port()
        ui = start_ui(uri, port)
        try:
            asyncio.run(capture(chromium, f"http://127.0.0.1:{port}", experiment_id,
                                [r.info.run_id for r in jobs], parents, psnr, args.out))
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)


if __name__ == "__main__":
    main()
