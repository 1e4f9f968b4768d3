"""facerec: train, evaluate and ship margin-based face recognition models."""

__version__ = "0.1.0"

_LAZY = {"Embedder": "facerec.inference", "load_model": "facerec.inference"}


def __getattr__(name: str):
    """`facerec.Embedder` etc., imported on first use (importing facerec stays free of torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facerec' has no attribute {name!r}")
