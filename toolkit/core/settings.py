"""One source of truth per setting.

A stage's settings are one dataclass. Each field is declared once with `setting(...)`: its type (the
annotation), default, help, and what values it takes (choices, a range, finiteness, a pattern). From
that declaration come:
- the Click options of the stage's command (`click_options`), each with a ParamType that converts and
  checks its value, so a bad value is a usage error (one line, exit 2) before any work starts;
- the recipe section's schema (`from_mapping`): unknown keys, wrong types and bad values are one error
  naming the file and key (exit 1);
- what the stage function takes (the dataclass instance itself).

Typed hyper-parameters of registered variants (DG algorithms, CL strategies) are `HP` declarations;
A settings field of type dict is a repeatable `--hp key=value` option; the config's `check()` types
it against the declarations (`typed_hparams`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import AugurError, UsageError

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are 32-bit


@dataclass(frozen=True)
class Spec:
    """What a setting accepts and how it is shown."""

    help: str = ""
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself excluded (a learning rate > 0)
    multiple_of: int | None = None
    cli: bool = True  # an option of the stage's command
    recipe: bool = True  # a key of the stage's recipe section
    flags: tuple[str, ...] = ()  # extra option names (aliases), e.g. ("-n",)
    hidden_flags: tuple[str, ...] = ()  # old names still accepted, not shown in --help
    metavar: str | None = None
    none_word: str | None = None  # the text that means None on the command line (e.g. "none")
    is_flag: bool = False  # a bool given as a bare flag (--quiet) rather than --x/--no-x

    def allowed(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices)


def setting(default: Any = MISSING, help: str = "", **spec: Any) -> Any:
    """A dataclass field with its Spec (see the module docstring)."""
    meta = {"augur": Spec(help=help, **spec)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def seed_setting(help: str = "Seed for every random choice of the stage (0 <= seed < 2^32).") -> Any:
    return setting(0, help, min=0, max=SEED_MAX)


# How a stage runs here, not what it computes: options of its command, never recipe keys (a recipe's run
# decides them for every stage at once), declared once for every torch stage.
def threads_setting(recorded: str = "") -> Any:
    """The CPU threads torch computes with (core/threads.py chooses them when left out)."""
    return setting(None, "CPU threads torch computes with (default: the cores other processes leave free, at least "
                         "one" + (f"; recorded in {recorded}" if recorded else "") + ").",
                   min=1, max=1024, none_word="auto", recipe=False)


def quiet_setting() -> Any:
    return setting(False, "No progress bar.", is_flag=True, recipe=False)


class ShowsProgress:
    """Settings with a `quiet` field (quiet_setting): `progress` is whether the stage draws its bars."""

    @property
    def progress(self) -> bool:
        return not self.quiet


# ----------------------------------------------------------------------------- types and checks
def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def _describe(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if typing.get_origin(tp) is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path"}.get(tp, str(tp))


def _bounds_text(spec: Spec) -> str:
    lo = None if spec.min is None else (f"> {spec.min:g}" if spec.min_open else f">= {spec.min:g}")
    hi = None if spec.max is None else f"<= {spec.max:g}"
    return " and ".join(x for x in (lo, hi) if x)


def check_value(value: Any, tp: Any, spec: Spec) -> Any:
    """Convert (YAML or Python values) and check one setting; ValueError(message) if it does not fit."""
    inner, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"needs {_describe(inner)}")
    origin = typing.get_origin(inner)
    if origin is list:
        (item,) = typing.get_args(inner)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected {_describe(inner)}, got {type(value).__name__}")
        if not value:  # as on the command line, where '' is refused: an empty list would silently do nothing
            raise ValueError("give at least one value (or leave the setting out for its default)")
        return [check_value(v, item, spec) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if inner is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
    elif inner in (str, Path):
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"expected {_describe(inner)}, got {value!r}")
        value = str(value)
    if inner in (int, float):
        if (spec.min is not None and (value <= spec.min if spec.min_open else value < spec.min)) or (
                spec.max is not None and value > spec.max):
            raise ValueError(f"must be {_bounds_text(spec)}, got {value}")
        if spec.multiple_of and value % spec.multiple_of:
            raise ValueError(f"must be a multiple of {spec.multiple_of}, got {value}")
    allowed = spec.allowed()
    if allowed is not None and value not in allowed:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
    return value


def parse_text(text: str, tp: Any, spec: Spec) -> Any:
    """Command-line text to a value of `tp` (then checked)."""
    inner, optional = _unwrap(tp)
    if optional and spec.none_word is not None and text.strip().lower() == spec.none_word:
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError("expected a comma-separated list")
        return [check_value(_scalar(p, item), item, spec) for p in parts]
    return check_value(_scalar(text, inner), tp, spec)


def _scalar(text: str, tp: Any) -> Any:
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return text


# ----------------------------------------------------------------------------- dataclass <-> CLI, recipes
def specs(cls: type) -> list[tuple[dataclasses.Field, Any, Spec]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name], f.metadata["augur"]) for f in dataclasses.fields(cls) if "augur" in f.metadata]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def click_options(cls: type, exclude: Iterable[str] = ()) -> Callable:
    """A decorator adding one Click option per CLI setting of `cls` (declaration order)."""
    import click

    class Checked(click.ParamType):
        def __init__(self, tp: Any, spec: Spec):
            self.tp, self.spec = tp, spec
            inner, _ = _unwrap(tp)
            self.name = getattr(inner, "__name__", "value")

        def convert(self, value, param, ctx):
            if not isinstance(value, str):
                try:
                    return check_value(value, self.tp, self.spec)
                except ValueError as e:
                    self.fail(str(e), param, ctx)
            try:
                return parse_text(value, self.tp, self.spec)
            except ValueError as e:
                self.fail(str(e), param, ctx)

        def get_metavar(self, param, ctx=None):  # click 8.2 passes ctx
            allowed = self.spec.allowed()
            if allowed is not None:
                return "[" + "|".join(allowed) + "]"
            return self.spec.metavar

    class KeyValue(click.ParamType):
        """`key=value` -> (key, value text); the value is typed against its declaration by the config's check()."""

        name = "key=value"

        def convert(self, value, param, ctx):
            if isinstance(value, tuple):
                return value
            key, sep, text = str(value).partition("=")
            if not sep or not key.strip():
                self.fail(f"takes key=value, got '{value}'", param, ctx)
            return key.strip(), text.strip()

    exclude = set(exclude)

    own = set(getattr(cls, "__annotations__", {}))
    ordered = sorted(specs(cls), key=lambda item: item[0].name not in own)  # the stage's own options first

    def decorate(fn: Callable) -> Callable:
        for f, tp, spec in reversed(ordered):
            if not spec.cli or f.name in exclude:
                continue
            name = option_name(f.name)
            default = default_of(f)
            inner, _ = _unwrap(tp)
            if inner is bool and spec.is_flag:
                opt = click.option(name, *spec.flags, f.name, is_flag=True, default=default, help=spec.help)
            elif inner is bool:
                off = "--no-" + f.name.replace("_", "-")
                opt = click.option(f"{name}/{off}", f.name, default=default, show_default=True, help=spec.help)
            elif typing.get_origin(inner) is dict:  # KEY=VALUE, repeatable (--hp); typed by the config's check()
                opt = click.option(name, *spec.flags, f.name, type=KeyValue(), multiple=True,
                                   metavar=spec.metavar or "KEY=VALUE", help=spec.help)
            else:
                shown = (",".join(map(str, default)) if isinstance(default, list) else
                         (spec.none_word or "none") if default is None else default)
                opt = click.option(name, *spec.flags, *spec.hidden_flags, f.name, type=Checked(tp, spec),
                                   default=None if default is None else (
                                       ",".join(map(str, default)) if isinstance(default, list) else default),
                                   show_default=str(shown), help=spec.help)
            fn = opt(fn)
        return fn

    return decorate


def from_cli(cls: type, values: dict[str, Any], **extra: Any) -> Any:
    """The dataclass from a command's keyword arguments (already converted and checked by Click)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in values.items() if k in names}
    for f, tp, spec in specs(cls):
        inner, _ = _unwrap(tp)
        if typing.get_origin(inner) is list and isinstance(kw.get(f.name), str):
            kw[f.name] = parse_text(kw[f.name], tp, spec)
        if typing.get_origin(inner) is dict and isinstance(kw.get(f.name), (tuple, list)):
            pairs: dict[str, str] = {}
            for key, text in kw[f.name]:
                if key in pairs:
                    raise UsageError(f"{option_name(f.name)} {key} is given twice")
                pairs[key] = text
            kw[f.name] = pairs
    cfg = cls(**{**kw, **extra})
    _cross_check(cfg, lambda name: option_name(name), UsageError)
    return cfg


def from_mapping(cls: type, raw: dict[str, Any], where: str, **extra: Any) -> Any:
    """The dataclass from a recipe section; every problem is one error naming `where`.KEY."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AugurError(f"{where}: expected a mapping of parameters")
    known = {f.name: (tp, spec) for f, tp, spec in specs(cls) if spec.recipe}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise AugurError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(known))})")
    values = {}
    for key, value in raw.items():
        tp, spec = known[key]
        try:
            values[key] = check_value(value, tp, spec)
        except ValueError as e:
            raise AugurError(f"{where}.{key}: {e}") from None
    cfg = cls(**{**values, **extra})
    _cross_check(cfg, lambda name: f"{where}.{name}", AugurError)
    return cfg


def _cross_check(cfg: Any, locate: Callable[[str], str], error: type) -> None:
    check = getattr(cfg, "check", None)
    if check is None:
        return
    try:
        check()
    except SettingError as e:
        raise error(f"{locate(e.field)}: {e.message}") from None


class SettingError(Exception):
    """Raised by a config's `check()` for a combination that does not fit; located by the caller."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field, self.message = field_name, message


def as_dict(cfg: Any, recipe_only: bool = True) -> dict[str, Any]:
    """The settings of `cfg` that define its result (for identities, cards and provenance)."""
    out = {}
    for f, _tp, spec in specs(type(cfg)):
        if recipe_only and not spec.recipe:
            continue
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


# ----------------------------------------------------------------------------- typed hyper-parameters
@dataclass(frozen=True)
class HP:
    """A hyper-parameter of a registered variant: default, type, allowed values, (for sweeps) the
    distribution a random search draws it from (a function of a numpy RandomState), and (for `--smoke`)
    the toy value a smoke run takes instead of the recipe's or the default (a function of it)."""

    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    choices: tuple[Any, ...] | None = None
    search: Callable[[Any], Any] | None = None
    smoke: Callable[[Any], Any] | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def spec(self) -> Spec:
        return Spec(help=self.help, min=self.min, max=self.max, min_open=self.min_open,
                    choices=tuple(map(str, self.choices)) if self.choices and self.type is str else None)

    def convert(self, value: Any) -> Any:
        tp = self.type
        if isinstance(value, str) and tp is not str:
            try:
                value = _scalar(value, tp)
            except ValueError:
                raise ValueError(f"takes {_describe(tp)}, got {value!r}") from None
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            value = check_value(value, tp, self.spec())
        except ValueError as e:
            raise ValueError(str(e).replace("expected", "takes")) from None
        if self.choices is not None and tp is not str and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, self.choices))}")
        return value

    def describe(self) -> str:
        parts = [f"{self.type.__name__} = {self.default!r}"]
        if self.choices:
            parts.append("one of " + "|".join(map(str, self.choices)))
        bounds = _bounds_text(self.spec())
        if bounds:
            parts.append(bounds)
        return ", ".join(parts)


def check_hparams(values: dict[str, Any], declared: dict[str, HP], owner: str, error: type = AugurError,
                  where: str = "") -> dict[str, Any]:
    """Convert and check `values` against `declared`; unknown keys and bad values are one error."""
    out = {}
    for key, value in values.items():
        if key not in declared:
            raise error(f"{where}{owner} has no hyper-parameter '{key}'; it takes "
                        f"{', '.join(declared) or 'none'}")
        try:
            out[key] = declared[key].convert(value)
        except ValueError as e:
            raise error(f"{where}{owner}: {key} {e}") from None
    return out


def typed_hparams(values: dict[str, Any], declared: dict[str, HP], owner: str) -> dict[str, Any]:
    """For a config's check(): `values` typed against `declared`, or SettingError('hp', ...) (which the CLI
    shows as `--hp: ...` and a recipe as `stages.X.hp: ...`)."""
    try:
        return check_hparams(values, declared, owner)
    except AugurError as e:
        raise SettingError("hp", str(e)) from None
