"""``geoseg train``: train a segmentation model from a YAML config (Lightning, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.errors import handle_errors


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--max-steps", type=int, help="Override training.max_steps.")
@click.option(
    "--stop-after",
    type=int,
    help="Stop at this step, keeping the full LR schedule (resume later to continue).",
)
@click.option(
    "--stop-after-minutes",
    type=float,
    help="Stop after this many minutes, keeping the LR schedule (equal-time comparisons).",
)
@click.option("--no-resume", is_flag=True, help="Start afresh even if OUTPUT_DIR has last.ckpt.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    help="Where to write the geoseg checkpoint (default: the config's 'export').",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set model.encoder=tu-tf_efficientnet_lite2 "
    "--set output_dir=../runs/lite2 (a separate run: resuming refuses another network).",
)
@handle_errors
def train(config: Path, max_steps: int | None, stop_after: int | None,
          stop_after_minutes: float | None, no_resume: bool, export_path: Path | None,
          overrides: tuple[str, ...]) -> None:  # fmt: skip
    """Train a segmentation model as CONFIG.yaml describes (see configs/train_default.yaml)."""
    from geoseg.training.train import train as run_training

    result = run_training(config, resume=not no_resume, max_steps=max_steps,
                          stop_after=stop_after, stop_after_minutes=stop_after_minutes,
                          export=export_path, overrides=overrides)  # fmt: skip
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    if result.exported is not None:
        click.echo(f"exported model:  {result.exported}")
    if result.metrics:
        click.echo(f"held-out mIoU {result.metrics['miou']:.4f}, "
                   f"pixel accuracy {result.metrics['pixel_accuracy']:.4f}")  # fmt: skip
