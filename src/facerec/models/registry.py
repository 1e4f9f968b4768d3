"""The backbone registry: tiny entry points that call one builder each."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from facerec.contract import Preprocess
from facerec.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register_model(name: str, aliases: tuple[str, ...] = (), **preprocess_defaults: Any) -> Callable:
    """Register a builder; `preprocess_defaults` set the contract fields other than sizes."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, aliases=aliases)(fn)
        _DEFAULTS[name] = preprocess_defaults
        return fn

    return deco


def create_model(name: str, preprocess: Preprocess | dict | None = None, **kwargs: Any) -> nn.Module:
    """Build backbone `name` (or an alias such as `mbf`, `r50`) with `kwargs`.

    The returned module carries `arch` (canonical name), `arch_kwargs` (the plain-typed kwargs
    it was built with) and `preprocess` (its input contract; `preprocess` overrides it).
    """
    _ensure_builtin()
    arch = MODELS.resolve(name)
    model = MODELS.get(arch)(**kwargs)
    model.arch = arch
    model.arch_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    if preprocess is None:
        d = dict(_DEFAULTS.get(arch, {}))
        d.setdefault("input_size", tuple(kwargs.get("input_size", (112, 112))))
        h, w = d["input_size"]
        d.setdefault("template", "sphereface" if w * 112 == h * 96 else "arcface")  # 112x96-shaped: SphereFace crops
        d.setdefault("embedding_size", int(getattr(model, "embedding_size", kwargs.get("embedding_size", 512))))
        preprocess = Preprocess(**d)
    elif isinstance(preprocess, dict):
        preprocess = Preprocess.from_dict(preprocess)
    model.preprocess = preprocess
    model.threshold = None  # a facerec.contract.Threshold once evaluation has fitted one
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Canonical names of the registered backbones matching `pattern`."""
    _ensure_builtin()
    return MODELS.list(pattern)


def _ensure_builtin() -> None:
    """Import the modules that register the built-in backbones (on first use, not at import)."""
    from facerec.models import zoo  # noqa: F401
