"""The named errors of lensprobe: one base class, one subclass per kind of fault.

Every error says what went wrong, where (the file, directory or field) and what fixes it, in one
line. Each class also derives from the built-in exception that code written before these classes
existed would catch (``ValueError``, ``FileExistsError``, ``OSError``), so ``except ValueError``
keeps working. The command line prints any :class:`LensprobeError` as one line on stderr.
"""

from __future__ import annotations

__all__ = [
    "DataFileError",
    "InputError",
    "InsufficientNegatives",
    "LensprobeError",
    "ModelNotFoundError",
    "OutputPathError",
    "ProbeFileError",
    "StoreCorruptError",
    "StoreError",
    "UnknownHookError",
]


class LensprobeError(Exception):
    """Base class of every error lensprobe raises on purpose (a user-facing, one-line message)."""


class InputError(LensprobeError, ValueError):
    """An argument or an input value is unusable (an empty text, labels of the wrong length)."""


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
