"""The exceptions the pipeline raises for bad input or a bad environment.

Deep code raises these with a one-line message that names the file or option at fault;
only the CLI turns them into an error line and an exit code. Anything else escaping is a bug.
"""


class PipelineError(Exception):
    """Base class: a problem the user can fix, described in one line.

    `param` names the library parameter at fault (`batch_size`, not `--batch-size`) and `value`
    its value; the message then reads "batch_size 0: must be at least 1". The CLI, which alone
    knows its flags, re-renders such an error with the flag that set the parameter.
    """

    def __init__(self, message: str, *, param: str | None = None, value: object = None) -> None:
        self.detail, self.param, self.value = message, param, value
        super().__init__(message if param is None else f"{param} {value}: {message}")

    def render(self, flags: dict[str, str]) -> str:
        """The one-line message, naming the flag that set `param` where there is one."""
        if self.param is None:
            return str(self)
        return f"{flags.get(self.param, self.param)} {self.value}: {self.detail}"


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


class ArrayError(PipelineError):
    """An array handed to a compiled kernel does not fit it (kind, dtype, layout, shape)."""


class DivergedError(PipelineError):
    """Training produced a non-finite loss."""


class OutputError(PipelineError):
    """An output location cannot be created or written (permissions, full disk)."""


class TrackingError(PipelineError):
    """An experiment tracker asked for cannot be used: not installed, or (required) unreachable."""
