"""The exceptions the pipeline raises for bad input or a bad environment.

Deep code raises these with a one-line message that names the file or option at fault;
only the CLI turns them into an error line and an exit code. Anything else escaping is a bug.
"""


class PipelineError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class SourceError(PipelineError):
    """A raw data source is missing, unreadable or fails its checksum."""


class IdxFormatError(SourceError):
    """An IDX file is malformed: bad magic, truncated, counts or labels out of range."""


class ShardSetError(PipelineError):
    """A shard directory or its manifest is missing, unknown or inconsistent."""


class ShardCorruptError(ShardSetError):
    """A shard's bytes fail a checksum (manifest sha256 or HDF5 fletcher32)."""


class LockedError(PipelineError):
    """Another process holds the lock of a directory this process wants to write."""


class ConfigError(PipelineError):
    """An option is out of range or conflicts with an existing run."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, corrupt, unsafe (pickled) or does not fit."""


class DivergedError(PipelineError):
    """Training produced a non-finite loss."""


class OutputError(PipelineError):
    """An output location cannot be created or written (permissions, full disk)."""
