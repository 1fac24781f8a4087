"""Score a (trained) method with the evaluation protocol; rebuild a trained run from its checkpoint.

Blind-spot networks are scored on whole images, as the released code does (the paper and
reproduction profiles), or in overlapping tiles of their training-crop size where the crops are
much smaller than the images (`eval.blindspot_tiles=auto`, the quick and smoke profiles; docs/methods.md
§4). Either way what a method estimates per image comes from the whole padded image.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from n2n_core.config import ExperimentConfig
from n2n_core.data.sets import resolve_set
from n2n_core.errors import CheckpointError, N2NError, first_line
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.evaluation.protocol import EvalRecord, EvalResult
from n2n_core.evaluation.tiling import denoise_tiled, tiles_per_call
from n2n_core.methods import Method, build_method
from n2n_core.noise import NoisyBatch, parse_style
from n2n_core.seeding import make_generator
from n2n_core.train.checkpoint import load_checkpoint

WHOLE_IMAGE_WARNING_RATIO = 2  # warn when whole-image blind-spot scoring meets images > 2× the crop


def scoring_tile(method: Method, cfg: ExperimentConfig) -> int | None:
    """Tile side for this method's scoring (its training crop), or None for whole images."""
    return cfg.train.patch_size if method.blind_spot and cfg.eval.blindspot_tiles == "auto" else None


def scoring_stride(cfg: ExperimentConfig) -> int:
    """Pixels from one scoring tile to the next (eval.blindspot_stride of the training crop)."""
    return max(1, round(cfg.eval.blindspot_stride * cfg.train.patch_size))


def make_denoiser(method: Method, model, device: torch.device, cfg: ExperimentConfig):
    """The evaluator's denoiser: whole images, or training-crop tiles for blind-spot networks."""
    tile = scoring_tile(method, cfg)
    warned = []

    def warn_once(items) -> None:
        side = max(max(item.noisy.noisy.shape[-2:]) for item in items)
        if method.blind_spot and side > WHOLE_IMAGE_WARNING_RATIO * cfg.train.patch_size and not warned:
            warned.append(side)
            print(f"warning: {cfg.method.name} trained on {cfg.train.patch_size}² crops is scored on whole "
                  f"{side}² images (eval.blindspot_tiles=off); a blind-spot network trained on crops "
                  "this much smaller scores lower (docs/methods.md §4)", file=sys.stderr)

    def one(batch: NoisyBatch):
        batch = dataclasses.replace(batch, estimate=method.image_estimate(model, batch))
        if tile is None:
            return method.denoise(model, batch)
        return denoise_tiled(lambda b: method.denoise(model, b), batch, tile, stride=scoring_stride(cfg),
                             tiles_per_call=tiles_per_call(batch.noisy, tile))

    def many(items):
        if tile is None and items:
            warn_once(items)
        if model is None and tile is None:
            return method.denoise_many(model, items, device)
        with torch.inference_mode():
            return [one(item.noisy.to(device)).float().cpu() for item in items]

    return many


class NonFiniteOutput(N2NError):
    """A denoised image holding NaN or inf: refused, never scored."""


def refuse_non_finite(denoise, name: str, dataset: str):
    """`denoise` with every output checked where it is scored (cropped back to its image): quantising
    NaN to uint8 gives a plausible PSNR (zs-n2n at method.lr=inf scored 6.39 dB), so refuse it."""

    def checked(items):
        outputs = denoise(items)
        for item, output in zip(items, outputs):
            if not torch.isfinite(output[..., : item.height, : item.width]).all():
                raise NonFiniteOutput(
                    f"{name} returned a denoised image that is not finite (NaN or inf) for image "
                    f"{item.image_id} of {dataset} (repeat {item.repeat}), so nothing is scored: its fit or "
                    "training diverged (lower train.lr, or method.lr where the method has one) or its "
                    "denoise is broken")
        return outputs

    return checked


def _our_reason(err: Exception) -> N2NError | None:
    """The project's own error (a ConfigError naming the problem and the fix) inside a validation error."""
    causes = [e.get("ctx", {}).get("error") for e in err.errors()] if isinstance(err, ValidationError) else []
    return next((cause for cause in causes if isinstance(cause, N2NError)), None)


def load_trained(checkpoint: Path, device: torch.device) -> tuple[ExperimentConfig, Method, nn.Module]:
    """Rebuild method and evaluation model (EMA weights when the run kept them) from a checkpoint."""
    saved = load_checkpoint(checkpoint, map_location=device)
    try:
        cfg = ExperimentConfig.model_validate_json(saved["meta"]["config"])
    except (KeyError, TypeError, ValueError) as err:
        cause = _our_reason(err)  # e.g. the run's method file changed since: say that, not pydantic's title
        detail = f": {first_line(cause)}" if cause else f" carries no valid configuration ({first_line(err)})"
        raise CheckpointError(f"checkpoint {checkpoint}{detail}") from None
    method = build_method(cfg.method, parse_style(cfg.noise), cfg.data.channels, cfg.method_source)
    model = method.build_model(make_generator(0))
    try:
        model.load_state_dict(saved["ema"] if saved.get("ema") is not None else saved["model"])
    except (RuntimeError, KeyError) as err:  # torch's message spans many lines: keep its first
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit the {cfg.method.name} network its configuration "
            f"names ({first_line(err)}); it holds another method's weights: pass "
            "the checkpoint that run wrote, or retrain"
        ) from None
    return cfg, method, model.to(device).eval()


def evaluate_model(method: Method, model, cfg: ExperimentConfig, dataset: str, noise: str,
                   device: torch.device, data_dir: Path, repeats: int | None = None,
                   progress=None, on_start=None, on_output=None, count_flops: bool = False) -> EvalResult:
    """Score a (trained) method on one set with the §8 protocol and the config's eval options.

    on_start(n) is called with the number of evaluations once the set is loaded (a progress bar's
    total), progress(1) after each, and on_output(input, output) with every denoised input.
    count_flops: the first evaluation runs under torch's FLOP counter (result.flops_per_evaluation).
    """
    noise_model = parse_style(noise)
    if noise_model.style != parse_style(cfg.noise).style:  # e.g. known-σ SSDN scored on another level
        method = build_method(cfg.method, noise_model, cfg.data.channels, cfg.method_source)
    evaluator = make_evaluator(resolve_set(dataset, data_dir, cfg.data.channels), noise_model, seed=cfg.eval.seed,
                               repeats=repeats or cfg.eval.repeats_for(dataset),
                               center_crop=cfg.eval.center_crop, max_images=cfg.eval.max_images)
    # checked before on_output: a refused output is never saved either
    denoise = refuse_non_finite(make_denoiser(method, model, device, cfg), cfg.method.name, dataset)
    if on_output is not None:
        plain = denoise

        def denoise(items):
            outputs = plain(items)
            for item, output in zip(items, outputs):
                on_output(item, output)
            return outputs
    counted = None
    if count_flops:
        from .flops import CountFirstCall

        denoise = counted = CountFirstCall(denoise)
    if on_start is not None:
        on_start(evaluator.n_evaluations)
    started = time.perf_counter()
    result = evaluator.run(denoise, chunk=method.eval_chunk, progress=progress)
    # wall time of the whole set (noise, denoising, PSNR): the cost a user waits for
    return dataclasses.replace(result, seconds=time.perf_counter() - started,
                               flops_per_evaluation=counted.flops_per_evaluation if counted else None)


def eval_result_to_json(result: EvalResult) -> str:
    return json.dumps(dataclasses.asdict(result))


def eval_result_from_json(text: str) -> EvalResult:
    raw = json.loads(text)
    raw["records"] = tuple(EvalRecord(**r) for r in raw["records"])
    return EvalResult(**raw)
