"""Captions of the report's tables: what budget, crops, seeds, noise draw, scoring and grid
timing produced the rows, written from the runs' logged parameters, tags and metrics alone."""

from __future__ import annotations

from collections import defaultdict

from .report_runs import NOISY_SET, JobRun, RunGroup, in_grid_order, trains_nothing
from .spread import BOOTSTRAP_SAMPLES


def floor_note(accounts: list[tuple[int, dict[str, float]]]) -> str:
    """'; grid runs of these rows: wall time 20.4 min, floor 13.8 min (20 rows, at 324 GFLOP/s); …'
    or '' where no grid measured its floor."""
    if not accounts:
        return ""
    parts = [f"wall time {m['grid_wall_seconds'] / 60:.1f} min, floor {m['grid_floor_seconds'] / 60:.1f} min "
             f"({n} row{'s' if n != 1 else ''}, at {m['matmul_gflops']:.0f} GFLOP/s)" for n, m in accounts]
    return (f"; grid runs of these rows: {'; '.join(parts)} (floor: the counted FLOPs of the jobs a grid ran "
            "at the float32 matmul rate it measured; CBM3D counts 0)")


def crop_sizes(runs: list[JobRun]) -> str:
    """'128²', or '128² (32² for course-prelu, course-strided)' when variants trained on other crops.

    The first trained run's size leads (table order: the paper's methods before the course's);
    training-free runs (noisy, cbm3d: images_seen 0) saw no crops and are left out.
    """
    trained = [run for run in in_grid_order(runs) if not trains_nothing(run)] or runs
    by_size: dict[str, list[str]] = defaultdict(list)
    for run in trained:
        by_size[str(run.params.get("train.patch_size"))].append(run.variant)
    main = str(trained[0].params.get("train.patch_size"))
    others = "; ".join(f"{size}² for {', '.join(sorted(names))}"
                       for size, names in sorted(by_size.items()) if size != main)
    return f"{main}²" + (f" ({others})" if others else "")


def scoring_cost(runs: list[JobRun], sets: list[str]) -> str:
    """'; scoring seconds per evaluation (kodak24) of the methods that train nothing: cbm3d 3.1, zs-n2n 312'.

    For a training-free method scoring is its whole cost (Zero-Shot Noise2Noise fits a network to
    every image); '' when no such run logged the time."""
    for name in sets:
        key = f"scoring_seconds_per_evaluation_{name}"
        costs = [f"{run.variant} {run.metrics[key]:.3g}" for run in in_grid_order(runs)
                 if trains_nothing(run) and key in run.metrics]
        if costs:
            return f"; scoring seconds per evaluation ({name}) of the methods that train nothing: {', '.join(costs)}"
    return ""


EVAL_KEYS = {"eval.max_images": "first images", "eval.center_crop": "central crop"}


def scored_differently(runs: list[JobRun], params: dict) -> str:
    """'; scored otherwise: zs-n2n (first images 2)' for rows whose evaluation settings differ from
    the caption's (e.g. a method too slow on a CPU for every image); '' when none does."""
    notes = []
    for run in in_grid_order(runs):
        if run.params.get("eval.sets") != params.get("eval.sets"):
            continue  # another column (the course networks' small32), described by its own crops note
        changed = [f"{what} {run.params.get(key)}" for key, what in EVAL_KEYS.items()
                   if run.params.get(key) != params.get(key)]
        if changed:
            notes.append(f"{run.variant} ({', '.join(changed)})")
    return f"; scored otherwise: {'; '.join(notes)}" if notes else ""


def seeds_note(groups: list[RunGroup]) -> str:
    """'training seeds 0, 1, 2 (seed 0 alone: cbm3d, noisy); a cell over several seeds is their
    mean ± sample standard deviation (n − 1), their number in the seeds column'."""
    by_seeds: dict[tuple, list[str]] = defaultdict(list)
    for group in in_grid_order(groups):
        by_seeds[tuple(group.seeds)].append(group.variant)
    main = max(by_seeds, key=lambda seeds: (len(by_seeds[seeds]), len(seeds)))  # the seeds most rows have
    word = "seeds" if len(main) > 1 else "seed"
    others = "; ".join(f"{'seeds' if len(s) > 1 else 'seed'} {', '.join(map(str, s))}: {', '.join(names)}"
                       for s, names in by_seeds.items() if s != main)
    text = f"training {word} {', '.join(map(str, main))}" + (f" ({others})" if others else "")
    if any(len(group.runs) > 1 for group in groups):
        text += ("; a cell over several seeds is their mean ± sample standard deviation (n − 1), their number "
                 "in the seeds column")
    return text


def settings_note(groups: list[RunGroup]) -> str:
    """Seeds, noise draw and training set of a table's rows, for its caption."""
    draws = sorted({group.noise_draw for group in groups})
    noisy = sorted({group.noisy_set for group in groups} - {""})
    where = f"noisy images of {', '.join(n.removeprefix(NOISY_SET) for n in noisy)} (train.train_set)" if noisy else ""
    noise = " and ".join(f"{DRAW_WORDS.get(d, d)} (train.noise_draw {d})" for d in draws)
    return f"{seeds_note(groups)}; noise {noise}" + (f"; trained on the {where}" if where else "")


DRAW_WORDS = {"fresh": "drawn afresh for every training crop", "fixed": "drawn once per training image"}


def caption(runs: list[JobRun], noise: str, profile: str, sets: list[str],
            accounts: list[tuple[int, dict[str, float]]] = (), members: list[JobRun] | None = None,
            settings: str = "", published: bool = True) -> str:
    """The table's caption; accounts: the grid runs behind its rows (grid_accounts); members: every
    run behind its rows (all seeds: devices and wall time), default `runs`; settings: seeds, noise
    draw and training set (settings_note), if any is not the default in this noise and profile."""
    members = members or runs
    params = next((r.params for r in runs if r.params.get("train.budget_images")), runs[0].params)
    repeats = ", ".join(f"{s} ×{params.get(f'eval.repeats.{s}', 1)}" for s in sets)
    crop = params.get("eval.center_crop")
    first = params.get("eval.max_images")
    which = f"the first {first}" if first not in (None, "None") else "all"
    crop_note = f"; central {crop}² crops of {which} images" if crop not in (None, "None") else ""
    crop_note += scored_differently(runs, params)
    devices = sorted({r.tags.get("device", "?") for r in members})
    # the thread count changes float reduction order, which training amplifies (perf README)
    threads = sorted({r.tags["torch_threads"] for r in members if r.tags.get("torch_threads")}, key=int)
    devices[-1] += f" ({' or '.join(threads)} torch thread{'s' if threads != ['1'] else ''} per job)" if threads else ""
    wall = sum(r.metrics.get("job_seconds", 0.0) for r in members)
    return (
        f"PSNR (dB) for {noise}, profile '{profile}': training budget {params.get('train.budget_images')} images "
        f"of {crop_sizes(runs)} crops from {params.get('train.train_set')} (batch "
        f"{params.get('train.batch_size')}){'; ' + settings if settings else ''}; evaluations per image: "
        f"{repeats}{crop_note}; PSNR on "
        f"uint8-quantised images (docs/methods.md §8); {scoring_note(runs)}; device {', '.join(devices)}; total job wall time "
        f"{wall / 60:.1f} min{floor_note(list(accounts))}{scoring_cost(runs, sets)}."
        + (" Published numbers from baselines/published.csv (first source per cell); a number marked (float) "
           "was measured on unquantised floats and is not directly comparable." if published else "")
    )


def interval_note(several: bool, reference: str, one_image: bool = False) -> str:
    """How the report's intervals of a paired difference are made (docs/methods.md, seeds)."""
    how = ("a two-level bootstrap (resample the training seeds, then the images within each drawn seed)"
           if several else "a bootstrap over images (one training seed)")
    return (f"95% interval from {how}: each run's per-image PSNRs (mean over repeats) paired with {reference}'s "
            f"run of the same training seed where {reference} has that seed, else with {reference}'s per-image "
            f"mean over its seeds (a method that trains nothing: with each of {reference}'s seeds in turn, so "
            f"that their spread is resampled); {BOOTSTRAP_SAMPLES} resamples, generator seed 0; resolved: the interval "
            "excludes 0" + ("; not judged (one seed): a row of one training seed among rows of several, whose "
                            "interval resamples images alone and would be too narrow" if several else "")
            + ("; not judged (one image): a row scored on one image (the main table's 'scored otherwise'), whose "
               "interval resamples no images" if one_image else ""))


def setting_label(draw: str, noisy: str) -> str:
    """A row setting in words: 'fresh noise', 'fixed noise', 'trained on noisy:kodak24', ..."""
    words = [f"{draw} noise"] if draw != "fresh" or not noisy else []
    return ", ".join(words + ([f"trained on {noisy}"] if noisy else []))


def setting_suffix(draw: str, noisy: str) -> str:
    """The file name part of a setting's table: 'fixed-noise', 'trained-on-noisy-kodak24', ...
    (both parts are plain names: unsafe_names)."""
    parts = [f"{draw}-noise"] if draw != "fresh" else []
    return "-".join(parts + ([f"trained-on-noisy-{noisy.removeprefix(NOISY_SET)}"] if noisy else []))


def scoring_note(runs: list[JobRun]) -> str:
    """How blind-spot variants were scored: in training-crop tiles or on whole images."""
    blind = [r for r in runs if r.params.get("method.name") in ("ssdn", "ssdn-mu")]
    if not blind:
        return "no blind-spot method"
    modes = sorted({r.params.get("eval.blindspot_tiles", "auto") for r in blind})
    sizes = sorted({str(r.params.get("train.patch_size")) for r in blind})
    if modes == ["off"]:
        return "blind-spot methods scored on whole images, as the released code"
    if modes == ["auto"]:
        strides = sorted({float(r.params.get("eval.blindspot_stride", 0.5)) for r in blind})
        return (f"blind-spot methods scored in overlapping {'/'.join(s + '²' for s in sizes)} tiles of their "
                f"training crops, {' or '.join(f'{s:g}' for s in strides)} of a tile apart")
    return "blind-spot methods scored partly in tiles, partly on whole images (see each run's eval.blindspot_tiles)"
