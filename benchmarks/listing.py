"""`n2n-bench list methods|noise|datasets|profiles`: what can be named on the command line, one line each.

Everything is read from where it is defined (the variant and profile files, the method registry,
the noise parser, the data set registry), so the list cannot drift from what the commands accept.
"""

from __future__ import annotations

import re
from pathlib import Path

from n2n_core.config import load_toml

from .compose import CONFIG_DIR, available

KINDS = ("methods", "noise", "datasets", "profiles")


def _first_comment(path: Path) -> str:
    """The first sentence of the comment block that opens the file (its description), on one line;
    '' without one. A sentence ends at a full stop followed by a capital letter or the block's end."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        block.append(line.lstrip("#").strip())
    text = " ".join(block)
    end = re.search(r"\.(?=\s+[A-Z(`])", text)
    return text[: end.end()] if end else text


def _variant_summary(path: Path) -> str:
    described = _first_comment(path)
    if described:
        return described
    method = load_toml(path).get("method", {})
    options = ", ".join(f"{k}={v}" for k, v in method.items() if k != "name")
    return f"{method.get('name', '?')}" + (f" ({options})" if options else "")


def methods() -> list[str]:
    from importlib import metadata

    from n2n_core.methods import METHODS, external

    lines = ["method variants (benchmarks/configs/methods/<name>.toml; --method NAME):"]
    width = max(26, *(len(name) for name in available("methods")))
    for name in available("methods"):
        lines.append(f"  {name:<{width}} {_variant_summary(CONFIG_DIR / 'methods' / f'{name}.toml')}")
    lines.append("registered methods (n2n_core/methods/__init__.py; --method NAME, the method's defaults):")
    for name, cls in METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        trainable = "" if cls.trainable else " [training-free]"
        lines.append(f"  {name:<{width}} {doc[0] if doc else cls.__name__}{trainable}")
    plugins = metadata.entry_points(group=external.ENTRY_POINT_GROUP)
    if plugins:  # named, not imported: a broken plugin must not break the list
        lines.append(f"installed plugins (entry-point group {external.ENTRY_POINT_GROUP}; --method NAME):")
        lines += [f"  {entry.name:<{width}} {entry.value}" for entry in sorted(plugins, key=lambda e: e.name)]
    lines.append("your own method: --method path/to/file.py:ClassName or package.module:ClassName "
                 "(a Method subclass, README 'Adding a method'), or a name registered in the entry-point "
                 "group n2n_bench.methods")
    return lines


def noise() -> list[str]:
    return [
        "noise styles (--noise; levels in the style's units):",
        "  gaussianA       x + N(0, σ²), σ = A on the 0-255 scale (gaussian25)",
        "  gaussianA_B     σ drawn per image from U(A, B) (gaussian5_50)",
        "  poissonA        Poisson(λx)/λ with λ = A (poisson30)",
        "  poissonA_B      λ drawn per image from U(A, B) (poisson5_50)",
        "  impulseA        A% of pixels replaced by uniform random colours (impulse50)",
        "  impulseA_B      the percentage drawn per image from U(A, B) (impulse0_100)",
        "  ('gauss25' is accepted for gaussian25; noise is never clipped or quantised before a network)",
    ]


def datasets(data_dir: Path | None = None) -> list[str]:
    from n2n_core.data.images import default_data_dir
    from n2n_core.data.sets import REGISTERED

    data_dir = data_dir or default_data_dir()
    described = {
        "kodak24": "the 24 Kodak PNGs (768x512); n2n-bench download kodak24",
        "bsd300": "BSDS300 test, 100 images (481x321); n2n-bench download bsd300",
        "bsd300-train": "BSDS300 train, 200 images (the smaller profiles' training set)",
        "set14": "Set14, 14 images; n2n-bench download set14 --allow-unverified",
        "imagenet-val": "ILSVRC2012 val images with both sides in [256, 512] (the paper's training set); $N2N_IMAGENET",
    }
    lines = [f"data sets (--dataset, train.train_set, eval.sets; data directory {data_dir}):"]
    for name, (_, folder, repeats) in REGISTERED.items():
        present = "present" if (data_dir / folder).is_dir() else "not downloaded"
        lines.append(f"  {name:<14} {described.get(name, folder)} [paper repeats x{repeats}; {present}]")
    lines += [
        "  small32        1,000 seeded 32x32 crops of the BSD300 test images (the course benchmark)",
        "  folder:PATH    every image in a folder (a plain folder path is accepted by evaluate --dataset)",
        "  course32:DIR   the course's train_data.pkl / val_data.pkl (given noisy pairs)",
        "  noisy:SET      train.train_set only: the evaluator's noisy inputs of SET (train on the test images)",
    ]
    return lines


def profiles() -> list[str]:
    lines = ["profiles (--profile; benchmarks/configs/profiles/<name>.toml):"]
    for name in available("profiles"):
        path = CONFIG_DIR / "profiles" / f"{name}.toml"
        train = load_toml(path).get("train", {})
        images = train.get("budget_images")
        budget = f"{images:,} training images" if isinstance(images, int) and images > 1 else ""
        lines.append(f"  {name:<13} {budget + '; ' if budget else ''}{_first_comment(path)}")
    return lines


def listing(kind: str, data_dir: Path | None = None) -> list[str]:
    if kind == "datasets":
        return datasets(data_dir)
    return {"methods": methods, "noise": noise, "profiles": profiles}[kind]()
