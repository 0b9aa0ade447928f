"""The data commands: `prepare` a shard set from a source, `show` it, `verify` it.

Each translates its options into one call of the data stage (`pipeline.data`) and shows the
result (`views`); the stages are imported inside the commands, so `--help` loads none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import views
from pipeline.cli.errors import fail, friendly_errors
from pipeline.cli.logs import LogFormat
from pipeline.cli.options import ImageShape, Logs, Source, ValFraction, command_line
from pipeline.data import MANIFEST, Compression, open_set, read_manifest
from pipeline.data.prepare import DEFAULT_SHARD_SIZE


def prepare(
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", file_okay=False, envvar="PIPELINE_DATA", help="Directory for the shard set."
        ),
    ],
    source: Source = "embedded",
    name: Annotated[str | None, typer.Option(help="Dataset name [default: the source's].")] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names [default: the source's, else 0..N-1]."),
    ] = None,
    image_shape: ImageShape = None,
    val_fraction: ValFraction = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Samples per shard file.")
    ] = DEFAULT_SHARD_SIZE,
    compression: Annotated[
        Compression, typer.Option(help="HDF5 compression of the shards.")
    ] = Compression.none,
    force: Annotated[
        bool,
        typer.Option(
            help="Rebuild even if a shard set is there; the old one stays usable until the "
            "new one is complete."
        ),
    ] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            help="Do nothing if --out already holds a complete shard set, whatever its source "
            "(the scheduled mode's first stage: a data set swapped in stays)."
        ),
    ] = False,
    log_format: Logs = LogFormat.plain,
) -> None:
    """Read a data source and write normalized, one-hot HDF5 shards plus manifest.json."""
    from pipeline.data import prepare as prepare_stage
    from pipeline.data import sources

    views.log.use(log_format)
    if if_missing and (out_dir / MANIFEST).exists() and not force:
        with friendly_errors():
            manifest = open_set(out_dir)
        views.log.event(
            "prepared",
            {"path": str(out_dir), "dataset": manifest.name, "identity": manifest.identity},
            plain=f"shards: {out_dir} already holds {manifest.name}",
        )
        return

    with friendly_errors(), views.display() as progress:
        class_names = [c.strip() for c in classes.split(",")] if classes else None
        shape = sources.parse_shape(image_shape) if image_shape else None
        raw = sources.load(
            source, name=name, classes=class_names, image_shape=shape, val_fraction=val_fraction
        )
        view = views.PrepareView(progress, {s: len(d.images) for s, d in raw.splits.items()})
        result = prepare_stage.prepare(
            out_dir,
            raw,
            shard_size=shard_size,
            compression=compression.value,
            force=force,
            command=command_line(),
            on_progress=view,
        )
        view.finish()
    for warning in result.warnings:
        views.log.warning(warning)
    views.prepare_summary(result)


def show(
    data: Annotated[Path, typer.Argument(help="A shard directory written by prepare.")],
    grid: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="PNG of sample images [default: ./NAME-samples.png]."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split the sample images come from.")] = "train",
    per_class: Annotated[int, typer.Option(min=1, max=32, help="Images per class.")] = 8,
) -> None:
    """Summarize a shard set (splits, counts per class, shape, identity, source) and draw a
    grid of sample images per class."""
    from pipeline.report import dataset

    with friendly_errors():
        manifest = open_set(data)
        summary = dataset.summarize(manifest)
        grid = grid or Path(f"{summary.name.replace('/', '_')}-samples.png")
        manifest.split(split)  # an unknown split is an error before anything is drawn
        dataset.save_sample_grid(manifest, grid, split=split, per_class=per_class)
    views.dataset_table(summary)
    views.say(f"sample images: {grid}")


def verify(
    data: Annotated[Path, typer.Argument(help="A shard directory written by prepare.")],
) -> None:
    """Check every shard against the manifest: presence, size, sha256, shapes, values, labels."""
    from pipeline.data import integrity

    with friendly_errors():
        manifest = read_manifest(data)
        problems = views.verify_table(data, integrity.verify(manifest))
    if problems:
        raise fail(f"{len(problems)} problem(s); first: {problems[0]}")
