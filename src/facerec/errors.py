"""Exceptions raised for bad user input: each names the file, record or key at fault."""

from __future__ import annotations

from pathlib import Path


class FacerecError(Exception):
    """Base class of every error facerec raises for bad input or configuration."""


class ConfigError(FacerecError, ValueError):
    """A configuration file or override is missing, malformed, or names an unknown key."""


class DataError(FacerecError, ValueError):
    """A data file (RecordIO, .bin, image, list) is missing, truncated or malformed."""


class CheckpointError(FacerecError, ValueError):
    """A checkpoint does not exist, cannot be read, or does not fit the architecture."""


def not_a_file_reason(path: str | Path, kind: str = "file") -> str:
    """Why `path` cannot be read as a `kind`, for error messages: it "does not exist", or it is
    a directory (the usual slip when a run folder is given for a checkpoint in it)."""
    return f"is a directory, not a {kind}" if Path(path).is_dir() else "does not exist"


def not_a_directory_reason(path: str | Path, kind: str = "directory") -> str:
    """Why `path` cannot be read as a `kind` of directory: it "does not exist", or it is a file."""
    return f"is a file, not a {kind}" if Path(path).exists() else "does not exist"
