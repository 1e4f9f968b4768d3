"""facerec: train, evaluate and ship margin-based face recognition models."""

__version__ = "0.1.0"
