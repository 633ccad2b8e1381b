"""Immutable records that are cheap to define: a frozen dataclass whose class compiles only `__init__`.

A frozen dataclass compiles six methods per class (`__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__`, `__delattr__`), each with `exec`, when its module is imported: with ~40 record
classes that was about a fifth of elaunch's start-up (0.5 ms a class here). `@value` generates
only `__init__`; `Value` supplies the other five once, with the same behaviour: fields are set once
(assigning again raises `dataclasses.FrozenInstanceError`), equality and hash over the fields in
order, and the dataclass `repr`. Type checkers see a frozen keyword-or-positional dataclass
(`dataclass_transform`), and `dataclasses.fields`/`replace`/`asdict` work as usual.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

_T = TypeVar("_T")


class Value:
    """Base of `@value` classes: the frozen dataclass methods, written once."""

    __slots__ = ()
    __value_fields__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _astuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__value_fields__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__value_fields__)
        return f"{type(self).__qualname__}({args})"


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def value(cls: type[_T]) -> type[_T]:
    """`@dataclass(frozen=True)` for a subclass of `Value`, compiling only `__init__` (see the module doc)."""
    if not issubclass(cls, Value):
        raise TypeError(f"@value class {cls.__name__} must derive from elaunch.values.Value")
    out = dataclasses.dataclass(eq=False, repr=False)(cls)
    out.__value_fields__ = tuple(f.name for f in dataclasses.fields(out))  # type: ignore[arg-type]
    return out
