"""Settings declared once: a config dataclass's field carries its default, its choices
and its help, and everything else derives from it (validation, the command line's flags
and their ``--help``), so that adding a choice is one change in one place."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its help text and allowed values (a tuple, or a function
    returning one, read when needed: a registry that fills on import)."""
    metadata = {"help": help, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def choices_of(owner: Any, name: str) -> tuple[Any, ...] | None:
    """The allowed values of field ``name`` of dataclass ``owner`` (None: any)."""
    choices = _field(owner, name).metadata.get("choices")
    if callable(choices):
        choices = choices()
    return None if choices is None else tuple(choices)


def default_of(owner: Any, name: str) -> Any:
    """The default of a dataclass field, or of a function's keyword argument."""
    if dataclasses.is_dataclass(owner):
        field = _field(owner, name)
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default
    return inspect.signature(owner).parameters[name].default


def check_choices(config: Any) -> None:
    """Raise ValueError naming the first field whose value is not one of its choices."""
    for field in dataclasses.fields(config):
        allowed = choices_of(type(config), field.name)
        value = getattr(config, field.name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{field.name} must be one of {allowed}, not {value!r}")


def typed_values(owner: Any, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Settings read from a file, checked against dataclass ``owner``'s whole-number,
    number and true/false fields: numbers written as text (YAML 1.1 reads ``1e-3`` as
    text; ``'64'`` is quoted) become numbers; an empty value where the setting has no
    "none", a number that is not finite, or a value of another type is a ValueError
    naming ``where`` and the setting. Other fields, and names ``owner`` lacks, pass
    unchanged."""
    kinds = {f.name: getattr(f.type, "__name__", f.type) for f in dataclasses.fields(owner)}
    return {name: _typed(kinds.get(name), name, value, where) for name, value in values.items()}


_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _typed(kind: Any, name: str, value: Any, where: str) -> Any:
    if kind not in _KIND_WORDS:
        return value
    if value is not None:
        if kind == "bool":
            if isinstance(value, bool):
                return value
        elif kind == "int":
            whole = _whole_number(value)
            if whole is not None:
                return whole
        else:
            number = _finite_number(value)
            if number is not None:
                return number
    raise ValueError(f"{where}: {name} must be {_KIND_WORDS[kind]}, not {value!r}")


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = _finite_number(value)
    return int(number) if number is not None and number.is_integer() else None


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def add_option(
    parser: argparse.ArgumentParser,
    owner: Any,
    name: str,
    *,
    flag: str | None = None,
    help: str | None = None,
    from_config_file: bool = False,
    **options: Any,
) -> None:
    """Add ``--NAME`` for a dataclass field: type, default, choices and help from the
    field. With ``from_config_file`` the flag's default is None (not given: the
    ``--config`` file's value, else the field's default, as the help says)."""
    field = _field(owner, name)
    default = default_of(owner, name)
    choices = choices_of(owner, name)
    text = help if help is not None else field.metadata.get("help", "")
    shown = "none" if default is None else default
    if isinstance(default, bool) and not default:
        options.setdefault("action", "store_true")
        if from_config_file:
            options.setdefault("default", None)
    else:
        kind = type(default) if default is not None and not isinstance(default, bool) else None
        if default is None:  # the annotation says: "float | None", "int | None", "str | None"
            annotation = str(field.type) if hasattr(field, "type") else "str"
            kind = next((k for k in (int, float) if k.__name__ in annotation), str)
        if kind in (int, float, str) and "type" not in options:
            options["type"] = kind
        options.setdefault("default", None if from_config_file else default)
        if choices is not None:
            options.setdefault("choices", choices)
        suffix = ", or the --config file's" if from_config_file else ""
        text = f"{text} (default: {shown}{suffix})"
    parser.add_argument(flag or "--" + name.replace("_", "-"), help=text, **options)


def _field(owner: Any, name: str) -> dataclasses.Field:
    try:
        return owner.__dataclass_fields__[name]
    except KeyError:
        raise KeyError(f"{owner.__name__} has no setting {name!r}") from None
