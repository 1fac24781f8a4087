"""CBM3D pool scaling on Kodak24 (not a test): pool wall time against the sum of single-image times.

    .venv/bin/python benchmarks/perf/bench_cbm3d.py [--images N] [--workers W] [--noise gaussian25]
                                                    [--skip-serial] [--e2e]

1. every image alone, one after another in this process (one bm3d thread, as in the pool): the
   single-image wall times and their sum;
2. the same images through `CBM3D.denoise_many` with a pool of W workers (default: usable cores),
   pool start-up included; outputs must equal the serial ones bit for bit;
3. scaling efficiency = (sum of single-image times) / (pool wall time × W); 1.0 is linear.

--e2e also runs `n2n-bench evaluate --method cbm3d --noise NOISE --dataset kodak24 --json` in a
subprocess and reports its PSNR and wall time (no cache: cache_dir is unset there).

Other work on the machine inflates both phases differently (the serial phase uses one core, the
pool all of them), so the load average before and after each phase is printed with the result;
compare efficiencies only from runs on a quiet machine. The CPU seconds the pool workers got are
sampled from /proc: `pool_core_share` says what fraction of the W cores the pool obtained, and
`cpu_scaling_efficiency` = serial CPU / (W × CPU of the busiest worker) removes the contention
(it measures load balance and pool overhead only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from n2n_core.data.images import default_data_dir  # noqa: E402
from n2n_core.data.sets import resolve_set  # noqa: E402
from n2n_core.evaluation.protocol import Evaluator  # noqa: E402
from n2n_core.evaluation.psnr import psnr_uint8  # noqa: E402
from n2n_core.methods import build_method, method_config  # noqa: E402
from n2n_core.methods.cbm3d import usable_cores  # noqa: E402
from n2n_core.noise import parse_style  # noqa: E402


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class DescendantCPU:
    """Samples /proc once a second: CPU seconds (user + system) of each process descending from this
    one, i.e. the pool workers (forkserver children). Shows how much CPU the pool actually got on
    a shared machine; each worker's last second before it exits may be missed."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.cpu, self._stop = interval, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        parent, cpu = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / self._tick
        me = os.getpid()
        for pid in cpu:
            p, seen = pid, 0
            while p in parent and p != me and seen < 64:
                p, seen = parent[p], seen + 1
            if p == me and pid != me:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu[pid])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="first N Kodak images (default 24)")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: usable cores)")
    parser.add_argument("--noise", default="gaussian25")
    parser.add_argument("--profile", default="np")
    parser.add_argument("--skip-serial", action="store_true", help="pool only (no efficiency)")
    parser.add_argument("--e2e", action="store_true", help="also time the n2n-bench evaluate command")
    args = parser.parse_args()

    data_dir = default_data_dir()
    noise = parse_style(args.noise)
    evaluator = Evaluator(resolve_set("kodak24", data_dir), noise, seed=0, repeats=1, max_images=args.images)
    items = list(evaluator.inputs())
    clean = dict(zip(evaluator.image_ids(), evaluator.clean_images()))
    cores = usable_cores()
    workers = args.workers or cores
    cpu = torch.device("cpu")
    print(f"# {len(items)} Kodak images, {args.noise}, profile {args.profile}, {cores} usable cores, "
          f"pool of {workers}; load average {load()}", flush=True)
    result: dict = {"images": len(items), "noise": args.noise, "profile": args.profile,
                    "cores": cores, "workers": workers}

    serial = None
    if not args.skip_serial:
        method = build_method(method_config("cbm3d", profile=args.profile, workers=1), noise)
        times, serial = [], []
        cpu0 = time.process_time()
        result["load_before_serial"] = load()
        for item in items:
            start = time.perf_counter()
            serial.extend(method.denoise_many(None, [item], cpu))
            times.append(time.perf_counter() - start)
            print(f"{item.image_id}: {times[-1]:.1f} s alone", flush=True)
        result.update(single_s=[round(t, 2) for t in times], sum_single_s=round(sum(times), 2),
                      serial_cpu_s=round(time.process_time() - cpu0, 2), load_after_serial=load())

    method = build_method(method_config("cbm3d", profile=args.profile, workers=workers), noise)
    result["load_before_pool"] = load()
    with DescendantCPU() as pool_cpu:
        start = time.perf_counter()
        pooled = method.denoise_many(None, items, cpu)
        wall = time.perf_counter() - start
    busy = sorted((round(v, 1) for v in pool_cpu.cpu.values() if v > 1.0), reverse=True)
    result.update(pool_wall_s=round(wall, 2), load_after_pool=load(), pool_worker_cpu_s=busy,
                  pool_core_share=round(sum(busy) / (wall * workers), 4))
    psnrs = [psnr_uint8(out[:, : it.height, : it.width], clean[it.image_id]) for it, out in zip(items, pooled)]
    result["psnr_mean"] = sum(psnrs) / len(psnrs)
    print(f"pool of {workers}: {wall:.1f} s wall for {len(items)} images; mean PSNR {result['psnr_mean']:.3f} dB",
          flush=True)
    if serial is not None:
        result["identical_to_serial"] = all(torch.equal(a, b) for a, b in zip(serial, pooled))
        result["scaling_efficiency"] = round(result["sum_single_s"] / (wall * workers), 4)
        print(f"sum of single-image times {result['sum_single_s']:.1f} s; scaling efficiency "
              f"{result['scaling_efficiency']:.3f} (target ≥ 0.90); identical: {result['identical_to_serial']}",
              flush=True)
        if busy:
            # contention-free view: serial CPU over the CPU the busiest worker needed × workers
            # (load balance and pool overhead only; equals the wall-time efficiency on a quiet machine)
            result["cpu_scaling_efficiency"] = round(result["serial_cpu_s"] / (busy[0] * workers), 4)
            print(f"pool workers' CPU {busy} s ({result['pool_core_share']:.2f} of {workers} cores obtained); "
                  f"serial CPU {result['serial_cpu_s']:.1f} s; CPU-time scaling efficiency "
                  f"{result['cpu_scaling_efficiency']:.3f}", flush=True)

    if args.e2e:
        cli = Path(sys.executable).with_name("n2n-bench")
        command = [str(cli), "evaluate", "--method", "cbm3d", "--noise", args.noise, "--dataset", "kodak24", "--json"]
        result["load_before_e2e"] = load()
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        result["e2e_wall_s"] = round(time.perf_counter() - start, 2)
        result["load_after_e2e"] = load()
        if done.returncode != 0:
            raise SystemExit(f"n2n-bench evaluate failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        result["e2e"] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"n2n-bench evaluate: {result['e2e']['psnr_mean']:.3f} dB in {result['e2e_wall_s']:.0f} s", flush=True)

    print(json.dumps(result))


if __name__ == "__main__":
    main()
