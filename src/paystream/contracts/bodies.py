"""Response bodies built from their contract models (`paystream.contracts.api`).

A response model is the one description of its body: the keys (each field's alias, else its
name) in field order, where each value comes from in a stored row, and how it is converted.
A field reads the row's column of its own name unless it is annotated with `From`; a field
declared with ``exclude_if`` is left out of the body when that says so (as ``model_dump``
leaves it out). A value the row cannot give (a computed balance, a nested object) is passed
by field name.

The body is a plain dict of Python values (datetimes stay datetimes), encoded by the service's
JSON encoder as before. No validation runs on the hot path: the e2e test
``tests/e2e/test_response_models.py`` checks every served body against its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from pydantic import BaseModel

Body = dict[str, Any]


class Row(Protocol):
    """A stored row: an asyncpg record or a mapping, read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class From:
    """Where a response field's value comes from: ``column`` (default: the field's name),
    passed through ``convert`` unless it is null (null stays null). ``stored=False``: no
    row has it (e.g. a secret shown once); it is passed by name or takes the field's default."""

    column: str | None = None
    convert: Callable[[Any], Any] | None = None
    stored: bool = True


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    key: str
    column: str | None  # None: not stored, the field's default unless passed
    convert: Callable[[Any], Any] | None
    default: Any
    exclude_if: Callable[[Any], bool] | None


@cache
def _steps(model: type[BaseModel]) -> tuple[_Step, ...]:
    steps = []
    for name, field in model.model_fields.items():
        source = next((m for m in field.metadata if isinstance(m, From)), From())
        if not source.stored and (field.is_required() or field.default_factory is not None):
            raise TypeError(f"{model.__name__}.{name} is not stored, so it needs a plain default")
        steps.append(_Step(
            name=name,
            key=field.serialization_alias or field.alias or name,
            column=(source.column or name) if source.stored else None,
            convert=source.convert,
            default=None if source.stored else field.default,
            exclude_if=field.exclude_if,
        ))
    return tuple(steps)


@cache
def _names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


_NO_ROW: dict[str, Any] = {}


def body_of(model: type[BaseModel], row: Row | None, values: dict[str, Any]) -> Body:
    """The body of ``model`` for ``row``; ``values`` (by field name) win over the row."""
    if values and not values.keys() <= _names(model):
        unknown = sorted(values.keys() - _names(model))
        raise TypeError(f"{model.__name__} has no field {', '.join(unknown)}")
    source = _NO_ROW if row is None else row
    body: Body = {}
    for step in _steps(model):
        if step.name in values:
            value = values[step.name]
        elif step.column is None:
            value = step.default
        else:
            value = source[step.column]
            if value is not None and step.convert is not None:
                value = step.convert(value)
        if step.exclude_if is not None and step.exclude_if(value):
            continue
        body[step.key] = value
    return body
