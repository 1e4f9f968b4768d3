"""Exceptions raised for bad user input: each names the file, record or key at fault."""


class FacerecError(Exception):
    """Base class of every error facerec raises for bad input or configuration."""


class ConfigError(FacerecError, ValueError):
    """A configuration file or override is missing, malformed, or names an unknown key."""


class DataError(FacerecError, ValueError):
    """A data file (RecordIO, .bin, image, list) is missing, truncated or malformed."""


class CheckpointError(FacerecError, ValueError):
    """A checkpoint does not exist, cannot be read, or does not fit the architecture."""
