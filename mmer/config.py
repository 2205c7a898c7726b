"""Strict configuration: YAML files mapped onto typed dataclasses.

Layering is ``defaults <- file <- key=value overrides``. Every key is checked against the
dataclass fields: an unknown key or a value of the wrong type raises :class:`ConfigError`
naming the file, the dotted key and the closest valid key, so a typo never silently falls
back to a default. A numeric field declared with :func:`bounded` also has its range checked
(``queues.utterances=0`` is refused, not taken as "unbounded").

    @dataclass(frozen=True)
    class Queues:
        utterances: int = bounded(8, ge=1, le=1024)

    cfg = load_config(TrainConfig, "configs/meld_teacher.yaml", ["optim.lr=2e-5"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mmer.errors import UsageError

T = TypeVar("T")
RANGE = "range"   # dataclass field metadata key holding a field's Range


class ConfigError(UsageError):
    """A config file or override that does not match its dataclass (a ValueError too)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: each bound inclusive (``ge``, ``le``), exclusive
    (``gt``, ``lt``) or absent. ``None`` values (an optional field turned off) are always allowed,
    and sequence values are checked item by item."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: Any) -> bool:
        """True when ``value`` lies inside (NaN never does)."""
        if value is None:
            return True
        if isinstance(value, (list, tuple)):
            return all(self.holds(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True   # not a number: the type check owns it
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self, name: str) -> str:
        """``'1 <= queues.utterances <= 1024'``, ``'0 < face.max_fps <= 120'``, ``'x >= 1'``."""
        lower = [(b, op) for b, op in ((self.ge, "<="), (self.gt, "<")) if b is not None]
        upper = [(op, b) for b, op in ((self.le, "<="), (self.lt, "<")) if b is not None]
        if lower and not upper:   # a lone lower bound reads better after the name
            (bound, op), = lower
            return f"{name} {op.replace('<', '>')} {_num(bound)}"
        return " ".join([f"{_num(b)} {op}" for b, op in lower] + [name] + [f"{op} {_num(b)}" for op, b in upper])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with ``default`` whose loaded value must satisfy the given bounds.

    ``ge``/``le`` are inclusive, ``gt``/``lt`` exclusive; a violation in a file or override raises
    :class:`ConfigError` naming the source, the dotted key, the value and the allowed range.
    The class attribute stays the plain default (``SegmenterConfig.end_silence_ms == 550.0``).
    """
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("bounded(): give at most one lower bound (ge or gt) and one upper bound (le or lt)")
    return dataclasses.field(default=default, metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)})


def range_of(cls: type, name: str) -> Range | None:
    """The :class:`Range` declared on field ``name`` of dataclass ``cls``, if any."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(RANGE)
    return None


def _check_range(allowed: Range | None, value: Any, source: str, dotted: str) -> None:
    if allowed is not None and not allowed.holds(value):
        raise ConfigError(f"{source}: key '{dotted}' = {value!r} is out of range; allowed: "
                          f"{allowed.describe(dotted)}")


def check_ranges(cfg: Any, source: str = "<config>", prefix: str = "") -> None:
    """Check every :func:`bounded` field of config dataclass ``cfg``, nested sections included
    (``load_config`` checks what files and overrides set; this checks a whole config, defaults too)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, source, f"{prefix}{f.name}.")
        else:
            _check_range(f.metadata.get(RANGE), value, source, f"{prefix}{f.name}")


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f" (closest valid key: '{match[0]}')" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in that type.

    Ints are accepted where floats are expected (YAML reads ``1`` as an int) and YAML lists
    become tuples where the field is a tuple; nothing else is converted silently.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section '{tp.__name__}', got {value!r}")
        source, _, key = where.partition(": key '")
        return _build(tp, value, source, key.rstrip("'") + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], data: dict, source: str, prefix: str = "", base: T | None = None) -> T:
    """Build ``cls`` from ``data`` on top of ``base`` (or the defaults).

    ``source`` names the file or override for error messages; ``prefix`` is the dotted path of
    this section inside it.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    current = base if base is not None else cls()
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_closest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            values[key] = _build(tp, value, source, f"{dotted}.", getattr(current, key))
        else:
            values[key] = _coerce(value, tp, f"{source}: key '{dotted}'")
            _check_range(range_of(cls, key), values[key], source, dotted)
    return dataclasses.replace(current, **values)


def from_dict(cls: type[T], data: dict, source: str = "<dict>", base: T | None = None) -> T:
    """Map a nested dict onto dataclass ``cls``; errors name ``source`` and the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return _build(cls, data, source, "", base)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``'optim.lr=2e-5'`` into ``(['optim', 'lr'], 2e-05)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, for example optim.lr=2e-5")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads 2e-5 as a string; numbers written like that are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key.strip().split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: dict = {}
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Resolve ``cls`` defaults <- YAML ``path`` <- ``key=value`` ``overrides``; every key's type
    and every :func:`bounded` field's range is checked (:class:`ConfigError` otherwise)."""
    cfg = cls()
    check_ranges(cfg, f"the defaults of {cls.__name__}")
    if path is not None:
        cfg = from_dict(cls, read_yaml(path), str(path), cfg)
    for text in overrides:
        keys, value = parse_override(text)
        cfg = from_dict(cls, _nest(keys, value), f"override '{text}'", cfg)
    return cfg


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a config dataclass (paths and tuples become str and lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to a run's outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
