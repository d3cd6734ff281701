"""The named errors of lensprobe: one base class, one subclass per kind of fault.

Every error says what went wrong, where (the file, directory or field) and what fixes it, in one
line. Each class also derives from the built-in exception that code written before these classes
existed would catch (``ValueError``, ``FileExistsError``, ``OSError``), so ``except ValueError``
keeps working. The command line prints any :class:`LensprobeError` as one line on stderr.
"""

from __future__ import annotations

__all__ = [
    "DataFileError",
    "DiskFullError",
    "InputError",
    "InputIndexError",
    "InputTypeError",
    "InsufficientNegatives",
    "LensprobeError",
    "MemoryBudgetError",
    "MissingDependencyError",
    "MissingFileError",
    "ModelNotFoundError",
    "OutputPathError",
    "ProbeFileError",
    "RemoteServiceError",
    "ResultsFileError",
    "StoreCorruptError",
    "StoreError",
    "UnknownHookError",
    "UnknownNameError",
    "UsageError",
]


class LensprobeError(Exception):
    """Base class of every error lensprobe raises on purpose (a user-facing, one-line message)."""


class InputError(LensprobeError, ValueError):
    """An argument or an input value is unusable (an empty text, labels of the wrong length)."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong kind (one string where a list of texts is needed)."""


class InputIndexError(LensprobeError, IndexError):
    """An index outside the rows or sequences it selects from."""


class UnknownNameError(LensprobeError, KeyError):
    """A name (a metric, a hook of a store) that is not among the known ones (listed)."""

    def __str__(self) -> str:  # KeyError quotes its message; the CLI prints it as a sentence
        return str(self.args[0]) if self.args else ""


class UsageError(LensprobeError, RuntimeError):
    """A call that the object's state does not allow yet (a readout before any forward)."""


class MissingDependencyError(LensprobeError, ImportError):
    """An optional dependency is not installed (the message names the extra to install)."""


class MissingFileError(LensprobeError, FileNotFoundError):
    """A file or folder the user named does not exist (the message says what writes it)."""


class InsufficientNegatives(InputError):
    """Too few negative rows to fix a threshold at the asked false-positive rate (``1 / fpr``)."""


class UnknownHookError(LensprobeError, ValueError):
    """A hook name the model does not have (the message lists the nearest valid ones)."""


class DataFileError(LensprobeError, ValueError):
    """A dataset file cannot be read as a table of texts and labels (empty, header only)."""


class ModelNotFoundError(LensprobeError, OSError):
    """A model name is neither bundled, nor a local directory, nor reachable on the hub."""


class OutputPathError(LensprobeError, FileExistsError):
    """Where output was asked to go cannot take it (a file, or a folder holding other things)."""


class StoreError(LensprobeError, ValueError):
    """An activation store cannot be used as asked (not a store, incomplete, another capture)."""


class StoreCorruptError(StoreError):
    """A file of an activation store is damaged: a shard, the manifest or a sidecar."""


class ProbeFileError(LensprobeError, ValueError):
    """A saved probe directory is damaged, malformed, or its weights do not match its config."""


class ResultsFileError(LensprobeError, ValueError):
    """A results folder's file (``results.json``, a cell's files) is damaged or of another schema."""


class MemoryBudgetError(LensprobeError, MemoryError):
    """A run would need more memory than its budget (``max_memory``); raised before any compute."""


class RemoteServiceError(LensprobeError, ConnectionError):
    """A remote service (nnsight's NDIF) could not be reached or did not run the request."""


class DiskFullError(LensprobeError, OSError):
    """The disk (or quota) ran out while lensprobe wrote a file; what was finished is kept."""
