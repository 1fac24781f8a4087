"""Compose a run's configuration, train it (resuming where it stopped) and score it.

This is the seam between the command line / grid and the library: it builds the noise model,
method, crop stream, trainer and evaluators from one validated ExperimentConfig.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from n2n_core.config import ExperimentConfig, load_toml, merge_layers
from n2n_core.data.images import default_data_dir
from n2n_core.data.sets import resolve_set
from n2n_core.data.train_stream import stream_for
from n2n_core.errors import CheckpointError, ConfigError, first_line
from n2n_core.evaluation.paired import make_evaluator
from n2n_core.evaluation.protocol import EvalRecord, EvalResult
from n2n_core.evaluation.psnr import quantize_uint8
from n2n_core.evaluation.tiling import denoise_tiled
from n2n_core.methods import METHODS, Method, build_method
from n2n_core.noise import parse_style
from n2n_core.seeding import derive_seed, make_generator
from n2n_core.tracking import NullTracker, Tracker
from n2n_core.train import distributed
from n2n_core.train.checkpoint import atomic_write, load_checkpoint
from n2n_core.train.trainer import Trainer

from n2n_core.device import resolve_device

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # found from a clone or an install


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.toml"))


def compose_config(profile: str, method: str, noise: str, overrides: list[str] = (),
                   seed: int | None = None) -> ExperimentConfig:
    """profile TOML → method TOML (or a bare registry name) → noise → overrides, validated once.

    A method file may carry a top-level `set = ["section.key=value", ...]`: overrides that win over
    the profile (the 32×32 course variants set their crop size and evaluation set this way), applied
    before the command line's own, which win over both.
    """
    profile_path = CONFIG_DIR / "profiles" / f"{profile}.toml"
    if not profile_path.exists():
        raise ConfigError(f"unknown profile {profile!r}; expected one of: {', '.join(available('profiles'))}")
    method_path = CONFIG_DIR / "methods" / f"{method}.toml"
    if method_path.exists():
        method_layer = load_toml(method_path)
    elif method in METHODS:
        method_layer = {"method": {"name": method}}
    else:
        raise ConfigError(
            f"unknown method {method!r}; expected a variant ({', '.join(available('methods'))}) "
            f"or a method ({', '.join(METHODS)})"
        )
    variant_overrides = method_layer.pop("set", [])
    if not (isinstance(variant_overrides, list) and all(isinstance(o, str) for o in variant_overrides)):
        raise ConfigError(f"{method_path}: `set` must be a list of 'section.key=value' strings")
    merged = merge_layers(load_toml(profile_path), method_layer, [*variant_overrides, *overrides])
    merged.update(profile=profile, noise=noise)
    if seed is not None:
        merged["seed"] = seed
    return ExperimentConfig.model_validate(merged)


def run_dir(cfg: ExperimentConfig, root: Path = Path("runs")) -> Path:
    """Default output folder: named by what it is, made unique by the configuration hash."""
    return root / f"{cfg.method.name}-{cfg.noise}-{cfg.profile}-{cfg.config_hash()}"


@dataclass
class TrainResult:
    checkpoint: Path | None
    images_seen: int
    skipped_steps: int
    seconds: float
    model: nn.Module | None
    method: Method
    config: ExperimentConfig


def make_denoiser(method: Method, model, device: torch.device, cfg: ExperimentConfig):
    """The evaluator's denoiser: whole images, or training-crop tiles for blind-spot networks."""
    tile = cfg.train.patch_size if method.blind_spot and cfg.eval.blindspot_tiles == "auto" else None

    def one(batch):
        if tile is None:
            return method.denoise(model, batch)
        return denoise_tiled(lambda b: method.denoise(model, b), batch, tile)

    def many(items):
        if model is None and tile is None:
            return method.denoise_many(model, items, device)
        with torch.inference_mode():
            return [one(item.noisy.to(device)).float().cpu() for item in items]

    return many


def _validation(method: Method, cfg: ExperimentConfig, device, data_dir: Path):
    """Fixed validation crops (training-crop sized) scored with the evaluation protocol."""
    if cfg.train.validation_images == 0:
        return None
    evaluator = make_evaluator(resolve_set(cfg.train.validation_set, data_dir, cfg.data.channels),
                               parse_style(cfg.noise),
                               seed=derive_seed(cfg.eval.seed, "validation"), repeats=1,
                               center_crop=cfg.train.patch_size, max_images=cfg.train.validation_images)

    def validate(model) -> float:
        model.eval()
        try:
            return evaluator.run(make_denoiser(method, model, device, cfg)).psnr_mean
        finally:
            model.train()

    return validate


def train(cfg: ExperimentConfig, out_dir: Path, tracker: Tracker | None = None,
          data_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume, or return the finished run in out_dir) and return the evaluation model.

    Under torchrun (WORLD_SIZE > 1) this process joins the job as one rank of a data-parallel run
    (n2n_core/train/distributed.py); only rank 0 writes config.json, validates, logs and saves.
    """
    data_dir = data_dir or default_data_dir()
    device = resolve_device(cfg.train.device)
    noise = parse_style(cfg.noise)
    method = build_method(cfg.method, noise, cfg.data.channels)
    if not method.trainable:
        return TrainResult(None, 0, 0, 0.0, None, method, cfg)
    dist_ctx, device = distributed.init_from_env(device)
    main = dist_ctx is None or dist_ctx.is_main
    stream = stream_for(resolve_set(cfg.train.train_set, data_dir, cfg.data.channels), cfg.train.patch_size,
                        cfg.seed)
    if getattr(stream, "paired", False) and not getattr(method, "accepts_pairs", False):
        raise ConfigError(f"{cfg.train.train_set} holds given noisy pairs without clean targets; only "
                          "course variants trained as N2N (method.target=\"n2n\") can train on it")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    config_file, config_text = out_dir / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=2)
    # a folder holding a checkpoint may belong to another run (fit() refuses it): its config.json
    # is only rewritten once fit() has accepted the checkpoint as this run's
    fresh = not (checkpoint.exists() or checkpoint.with_name(checkpoint.name + ".prev").exists())
    if fresh and main:
        atomic_write(config_file, lambda tmp: tmp.write_text(config_text))
    model = method.build_model(make_generator(derive_seed(cfg.seed, "init")))
    trainer = Trainer(method, stream, cfg.train, cfg.seed, device, tracker or NullTracker(),
                      validate=_validation(method, cfg, device, data_dir) if main else None,
                      identity=cfg.config_hash(), meta={"config": cfg.canonical_json()},
                      progress=progress, dist=dist_ctx)
    eval_model = trainer.fit(model, checkpoint)
    if not fresh and main:
        atomic_write(config_file, lambda tmp: tmp.write_text(config_text))
    state = trainer.final_state
    return TrainResult(checkpoint, state.images_seen, state.skipped_steps, state.seconds,
                       eval_model, method, cfg)


def load_trained(checkpoint: Path, device: torch.device) -> tuple[ExperimentConfig, Method, nn.Module]:
    """Rebuild method and evaluation model (EMA weights when the run kept them) from a checkpoint."""
    saved = load_checkpoint(checkpoint, map_location=device)
    try:
        cfg = ExperimentConfig.model_validate_json(saved["meta"]["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {checkpoint} carries no valid configuration ({err})") from None
    method = build_method(cfg.method, parse_style(cfg.noise), cfg.data.channels)
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
                   progress=None) -> EvalResult:
    """Score a (trained) method on one set with the §8 protocol and the config's eval options."""
    noise_model = parse_style(noise)
    if noise_model.style != parse_style(cfg.noise).style:
        # e.g. known-σ SSDN scored on another level
        method = build_method(cfg.method, noise_model, cfg.data.channels)
    evaluator = make_evaluator(resolve_set(dataset, data_dir, cfg.data.channels), noise_model,
                               seed=cfg.eval.seed, repeats=repeats or cfg.eval.repeats_for(dataset),
                               center_crop=cfg.eval.center_crop, max_images=cfg.eval.max_images)
    return evaluator.run(make_denoiser(method, model, device, cfg), chunk=method_chunk(method),
                         progress=progress)


def method_chunk(method: Method) -> int:
    return getattr(method, "eval_chunk", 1)


CROP_SIZE = 128  # side of the denoised crops saved for the report's crop grid


def set_label(name: str) -> str:
    """File- and metric-safe name of an evaluation set: 'course32:DIR' → 'course32' (as in baselines/)."""
    name = "course32" if name.startswith("course32:") else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def score_all(result: TrainResult, out_dir: Path, data_dir: Path, progress: bool = True) -> dict[str, EvalResult]:
    """Score on every evaluation set of the config (keyed by set_label); saved and reused on rerun."""
    cfg = result.config
    device = resolve_device(cfg.train.device)
    scores = {}
    for name in cfg.eval.sets:
        label = set_label(name)
        saved = out_dir / f"scores-{label}.json"
        if saved.exists():
            scores[label] = eval_result_from_json(saved.read_text())
            continue
        from tqdm import tqdm

        with tqdm(desc=f"eval {label}", disable=not progress, leave=False, unit="img") as bar:
            scores[label] = evaluate_model(result.method, result.model, cfg, name, cfg.noise, device,
                                           data_dir, progress=bar.update)
        write_per_image_csv(scores[label], out_dir / f"psnr-{label}.csv")
        atomic_write(saved, lambda tmp, r=scores[label]: tmp.write_text(eval_result_to_json(r)))
    if cfg.eval.sets:
        save_example_crops(result, cfg.eval.sets[0], out_dir, data_dir, device)
    return scores


def eval_result_to_json(result: EvalResult) -> str:
    return json.dumps(dataclasses.asdict(result))


def eval_result_from_json(text: str) -> EvalResult:
    raw = json.loads(text)
    raw["records"] = tuple(EvalRecord(**r) for r in raw["records"])
    return EvalResult(**raw)


def write_per_image_csv(result: EvalResult, path: Path) -> None:
    lines = ["image_id,repeat,psnr,level"] + [
        f"{r.image_id},{r.repeat},{r.psnr:.6f},{r.level:.8g}" for r in result.records
    ]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def save_example_crops(result: TrainResult, dataset: str, out_dir: Path, data_dir: Path, device) -> None:
    """noisy / denoised / clean crops of the first image (repeat 0), for the report's crop grid."""
    from PIL import Image

    cfg = result.config
    evaluator = make_evaluator(resolve_set(dataset, data_dir, cfg.data.channels), parse_style(cfg.noise),
                               seed=cfg.eval.seed, repeats=1, center_crop=cfg.eval.center_crop, max_images=1)
    item = next(evaluator.inputs())
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
