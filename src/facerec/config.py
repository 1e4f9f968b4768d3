"""Training configuration: a typed dataclass schema loaded from YAML with dotted overrides.

A YAML file sets the schema, `--set section.key=value` overrides it, an unknown key is an
error that names the nearest valid key, a wrong type names the key and the expected type,
and the resolved config is written next to the run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml

from facerec.errors import ConfigError, not_a_file_reason


@dataclass
class ModelConfig:
    """The backbone: a name from `facerec.models.list_models()` and its build options."""

    name: str = "mobilefacenet"
    embedding_size: int = 512
    input_size: tuple[int, int] = (112, 112)
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # start from these weights (any format load_checkpoint reads)


@dataclass
class HeadConfig:
    """The classification head owning the class centres, and its margin."""

    type: Literal["fc", "partial_fc", "softmax"] = "fc"
    margin: str = "arcface"
    s: float = 64.0
    m: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)
    sample_rate: float = 1.0
    sub_centers: int = 1
    sparse_grad: bool = False


@dataclass
class SyntheticConfig:
    """Built-in procedural identities, used when `data.train` is "synthetic"."""

    identities: int = 1000
    images_per_identity: int = 40
    val_identities: int = 300
    val_pairs: int = 3000
    seed: int = 0
    image_size: int = 112
    jpeg_quality: int = 92


@dataclass
class DataConfig:
    """Where training and validation data come from."""

    train: str = "synthetic"
    val: list[str] = field(default_factory=list)
    color: Literal["RGB", "BGR"] = "RGB"
    num_workers: int = 0
    bad_records: Literal["error", "skip"] = "error"  # skip: leave unreadable records out, log each
    cache_dir: str = ".cache/facerec"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (milestones and warmup in epochs)."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    head_lr: Optional[float] = None
    no_decay_norm_bias: bool = False
    schedule: Literal["multistep", "cosine", "poly", "constant"] = "multistep"
    milestones: list[float] = field(default_factory=lambda: [22.0, 31.0])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: Optional[float] = None


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, logging and checkpoints."""

    epochs: float = 36.0
    batch_size: int = 256
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False  # with several processes, BatchNorm statistics over the global batch
    dist_timeout_minutes: Optional[float] = None  # collective waits (rank 0's evaluation); None: torch's
    seed: int = 0
    deterministic: bool = False
    threads: int = 0
    max_bad_steps: int = 20  # consecutive NaN/Inf steps (skipped) before the run stops
    log_every: int = 50
    output_dir: str = "runs/train"
    checkpoint_every: int = 0
    keep_last: int = 2
    tensorboard: bool = False  # scalars under <run dir>/tensorboard
    visdom: bool = False  # live plots on a visdom server
    visdom_server: str = "http://127.0.0.1"
    visdom_port: int = 8097
    visdom_env: str = "facerec"


@dataclass
class EvalConfig:
    """Verification during and after training."""

    every_epochs: float = 1.0
    flip: Literal["sum", "concat", "none"] = "sum"
    protocol: Literal["insightface", "sphereface"] = "insightface"
    batch_size: int = 256


@dataclass
class Config:
    """The whole run: one YAML file with these six sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


# ---------------------------------------------------------------------------------------------
# Type checking and conversion


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return (" | ".join(names)) + (" or null" if type(None) in args else "")
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section and expects a mapping, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key '{key}' expects one of {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise wrong
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}' expects {len(args)} values ({_type_name(tp)}), got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "5e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong
        return value
    raise ConfigError(f"config key '{key}': unsupported schema type {tp!r}")  # pragma: no cover


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    valid = list(_fields(cls))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    where = f"section '{prefix[:-1]}'" if prefix else "the top level"
    return ConfigError(
        f"unknown config key '{prefix}{key}'{hint} (valid keys in {where}: {', '.join(valid)})"
    )


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    fields = _fields(cls)
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key(cls, str(key), prefix)
        kwargs[key] = _coerce(value, fields[key], prefix + key)
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Public API


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated `Config` from nested plain values (as read from YAML)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build(Config, values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return path, value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `values` with each `a.b.c=value` override applied (validated later)."""
    import copy

    out = copy.deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        cls: Any = Config
        for i, part in enumerate(path):
            fields = _fields(cls) if dataclasses.is_dataclass(cls) else None
            if fields is not None and part not in fields:
                raise _unknown_key(cls, part, "".join(p + "." for p in path[:i]))
            if i == len(path) - 1:
                node[part] = value
                break
            cls = fields[part] if fields is not None else Any
            if not (dataclasses.is_dataclass(cls) or cls is Any or typing.get_origin(cls) is dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[: i + 1])}' is not a section")
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[: i + 1])}' is not a section")
            node = nxt
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `--set` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} {not_a_file_reason(p, 'YAML config file')}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r} is not a UTF-8 text file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping of sections (model, head, data, optim, "
                f"train, eval), got {type(loaded).__name__}"
            )
        values = loaded
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from facerec.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
