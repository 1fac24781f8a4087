"""The `n2n-bench` command line: parses options, calls the library, prints results.

Every user-fixable problem (an N2NError or a configuration validation error) is printed as one
line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from n2n_core.errors import N2NError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def _one_line_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def friendly_errors(fn):
    """Turn user-fixable errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except N2NError as err:
            typer.echo(f"error: {err}", err=True)
        except ValidationError as err:
            typer.echo(f"error: {_one_line_validation(err)}", err=True)
        raise typer.Exit(2)

    return wrapper


def _data_dir(value: Optional[Path]) -> Path:
    from n2n_core.data.images import default_data_dir

    return value if value is not None else default_data_dir()


@app.command()
@friendly_errors
def evaluate(
    noise: str = typer.Option(..., help="noise style, e.g. gaussian25, poisson5_50, impulse50"),
    dataset: str = typer.Option("kodak24", help="kodak24, bsd300, bsd300-train, set14, folder:PATH"),
    method: str = typer.Option("noisy", help="a training-free method (noisy, cbm3d)"),
    checkpoint: Optional[Path] = typer.Option(None, help="score a trained checkpoint instead"),
    repeats: Optional[int] = typer.Option(None, min=1, help="evaluations per image (default 1)"),
    seed: int = typer.Option(0, help="evaluation seed: same seed, same noisy inputs"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    json_out: bool = typer.Option(False, "--json", help="last stdout line: one JSON object"),
) -> None:
    """Score a method on an evaluation set with the fixed protocol (METHODS.md §8)."""
    from benchmarks.evaluate import evaluate_command

    summary = evaluate_command(
        noise=noise, dataset=dataset, method=method, checkpoint=checkpoint,
        repeats=repeats, seed=seed, device=device, data_dir=_data_dir(data_dir),
        progress=sys.stderr.isatty() or not json_out,
    )
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['method']} on {summary['dataset']} with {summary['noise']}: "
            f"{summary['psnr_mean']:.2f} dB over {summary['n_evaluations']} evaluations "
            f"({summary['convention']} PSNR)"
        )


@app.command()
@friendly_errors
def download(
    name: str = typer.Argument(..., help="kodak24, bsd300, bsd300-train or set14"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $N2N_DATA)"),
    mirror: Optional[str] = typer.Option(None, help="base URL of a mirror (default: canonical)"),
    allow_unverified: bool = typer.Option(False, help="accept files with no known checksum (set14)"),
) -> None:
    """Download a data set into the data directory, verifying every file's sha256."""
    from n2n_core.data.download import download_set

    target = download_set(name, _data_dir(data_dir), mirror=mirror, allow_unverified=allow_unverified)
    typer.echo(f"{name}: ready in {target}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
