"""What a finished job leaves in its run folder: scores, per-image CSVs and example crops."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from n2n_core.data.sets import resolve_set
from n2n_core.device import resolve_device
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.evaluation.protocol import EvalResult
from n2n_core.evaluation.psnr import quantize_uint8
from n2n_core.noise import parse_style
from n2n_core.train.checkpoint import atomic_write

from .scoring import eval_result_from_json, eval_result_to_json, evaluate_model, make_denoiser
from .training import TrainResult

CROP_SIZE = 128  # side of the denoised crops saved for the report's crop grid


def set_label(name: str) -> str:
    """File- and metric-safe name of an evaluation set: 'course32:DIR' → 'course32' (as in baselines/)."""
    name = "course32" if name.startswith("course32:") else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def score_all(result: TrainResult, out_dir: Path, data_dir: Path, progress: bool = True,
              method_logs: dict[str, dict[str, float]] | None = None) -> dict[str, EvalResult]:
    """Score on every evaluation set of the config (keyed by set_label); saved and reused on rerun.

    method_logs, if given, receives each freshly scored set's `Method.take_eval_logs()`."""
    cfg = result.config
    device = resolve_device(cfg.train.device)
    scores = {}
    first_outputs: list[torch.Tensor] = []
    for name in cfg.eval.sets:
        label = set_label(name)
        saved = out_dir / f"scores-{label}.json"
        if saved.exists():
            scores[label] = eval_result_from_json(saved.read_text())
            continue
        from tqdm import tqdm

        bars: list = []  # opened once the set is loaded, with its total

        def keep_first(item, output, name=name):  # the example crop of a method that fits per image
            if name == cfg.eval.sets[0] and item.repeat == 0 and not first_outputs:
                first_outputs.append(output.detach().cpu())

        try:
            scores[label] = evaluate_model(
                result.method, result.model, cfg, name, cfg.noise, device, data_dir,
                progress=lambda n=1: bars[0].update(n), on_output=keep_first, count_flops=True,
                on_start=lambda total, lab=label: bars.append(
                    tqdm(total=total, desc=f"eval {lab}", disable=not progress, leave=False, unit="img")))
        finally:
            for bar in bars:
                bar.close()
        logs = result.method.take_eval_logs()
        if method_logs is not None and logs:
            method_logs[label] = logs
        write_per_image_csv(scores[label], out_dir / f"psnr-{label}.csv")
        atomic_write(saved, lambda tmp, r=scores[label]: tmp.write_text(eval_result_to_json(r)))
    if cfg.eval.sets:
        save_example_crops(result, cfg.eval.sets[0], out_dir, data_dir, device,
                           denoised=first_outputs[0] if first_outputs else None)
    return scores


def write_per_image_csv(result: EvalResult, path: Path) -> None:
    lines = ["image_id,repeat,psnr,level"] + [
        f"{r.image_id},{r.repeat},{r.psnr:.6f},{r.level:.8g}" for r in result.records
    ]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def save_example_crops(result: TrainResult, dataset: str, out_dir: Path, data_dir: Path, device,
                       denoised: torch.Tensor | None = None) -> None:
    """noisy / denoised / clean crops of the first image (repeat 0), for the report's crop grid.

    denoised: the method's output for that input when scoring kept it (a rerun whose scores were
    saved has none and denoises it again)."""
    from PIL import Image

    cfg = result.config
    evaluator = make_evaluator(resolve_set(dataset, data_dir, cfg.data.channels), parse_style(cfg.noise),
                               seed=cfg.eval.seed,
                               repeats=1, center_crop=cfg.eval.center_crop, max_images=1)
    item = next(evaluator.inputs())
    if denoised is None:
        denoised = make_denoiser(result.method, result.model, device, cfg)([item])[0]
    denoised = denoised[0] if denoised.dim() == 4 else denoised
    clean = evaluator.clean_images()[0]
    h, w = item.height, item.width
    top, left = max(0, (h - CROP_SIZE) // 2), max(0, (w - CROP_SIZE) // 2)
    window = (slice(None), slice(top, top + CROP_SIZE), slice(left, left + CROP_SIZE))
    for label, image in (("noisy", item.noisy.noisy[0]), ("denoised", denoised), ("clean", clean)):
        pixels = image if image.dtype == torch.uint8 else quantize_uint8(image[:, :h, :w])
        array = pixels[window].permute(1, 2, 0).contiguous().numpy()
        array = array[..., 0] if array.shape[-1] == 1 else array  # greyscale: a mode-L PNG
        target = out_dir / f"crop-{set_label(dataset)}-{label}.png"
        atomic_write(target, lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG"))
