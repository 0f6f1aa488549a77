"""The errors of data loading, shared by the loaders (``lstmq.data``), the download
(``lstmq.download``) and the TFDS source (``lstmq.tfds_source``)."""


class DataError(ValueError):
    """A data file, folder, archive, download or split request is invalid; names it."""


class MissingDependencyError(DataError, ImportError):
    """An optional dependency (TFDS) is not installed."""


class DataUnavailableError(DataError):
    """No local copy is configured and the download failed: says how to point at one."""
