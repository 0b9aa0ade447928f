"""Raw data -> shards -> batches: the one entry point to a shard set.

    from pipeline.data import Loader, Manifest, open_set, prepare, sources
    prepare.prepare(directory, sources.load("idx:DIR"))  # raw images -> shards + manifest.json
    manifest = open_set(directory)  # every claim checked, under the set's reader lock
    for x, y in Loader(manifest, "train", batch_size=3).epoch(0): ...

The modules behind it, in the order the data flows: `sources` (one per raw form), `prepare`
(the stage), `shards` (HDF5 reading and writing, nothing else), `manifest` and
`manifest_file` (the set's description, its one schema), `integrity` (every check of a set
against its files), `loader` (the batches).
"""

from pipeline.data import prepare  # the stage: prepare.prepare(out, raw)
from pipeline.data.integrity import open_set, under_reader_lock, verify
from pipeline.data.loader import Loader, LoaderState
from pipeline.data.manifest import (
    DATASETS,
    MANIFEST,
    SHARD_NAME,
    Compression,
    Manifest,
    ShardInfo,
    SplitInfo,
)
from pipeline.data.manifest_file import read as read_manifest

__all__ = [
    "DATASETS",
    "MANIFEST",
    "SHARD_NAME",
    "Compression",
    "Loader",
    "LoaderState",
    "Manifest",
    "ShardInfo",
    "SplitInfo",
    "open_set",
    "prepare",
    "read_manifest",
    "under_reader_lock",
    "verify",
]
