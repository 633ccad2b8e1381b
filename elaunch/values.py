"""Records that cost nothing to define: dataclass semantics without the dataclasses module at start-up.

`@dataclass` compiles its methods with `exec` when a module is imported (about 0.15 ms a class
for `__init__` alone, 0.5 ms for a frozen one) and `import dataclasses` pulls in `inspect`
(5 ms): with ~45 record and event classes that was a third of elaunch's start-up, paid before
the first worker starts. Here a class decorator only records the field names and defaults;
`__init__`, equality, hash, `repr` and immutability are written once, in the base classes.

* `@value` on a `Value` subclass: an immutable record (fields set once; assigning again raises
  `FrozenInstanceError`), equal and hashed by its fields in order, a dataclass-style `repr`.
* `@record` on a `Record` subclass: a mutable record (equality by identity), dataclass-style `repr`.
* Fields are the class's annotated names, bases first, in order; a default is the class
  attribute, or `field(default_factory=...)`; `ClassVar` annotations are not fields.
* `__post_init__` runs after `__init__` when defined. `kw_only=True` refuses positional arguments.
* `fields(obj_or_cls)` (names), `replace(obj, **changes)` (a copy; `__init__` and `__post_init__`
  are not re-run, so only for records whose fields are independent), `asdict(obj)` (one level).
Type checkers see dataclasses (`dataclass_transform`). Creating an instance costs a few µs more
than a dataclass's generated `__init__`; nothing here is created per line of worker output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

_T = TypeVar("_T")
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assigning to (or deleting) a field of an immutable record (as `dataclasses.FrozenInstanceError`)."""


class Field:
    """A field's default: a value or a factory called for each instance (see `field`)."""

    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> None:
        self.default, self.default_factory = default, default_factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    """`dataclasses.field` for `@value`/`@record` classes: a default value or a default factory."""
    return Field(default, default_factory)


class _Base:
    """The shared machinery: a generic `__init__` over the class's fields and a dataclass-style repr."""

    __slots__ = ()
    __record_fields__: ClassVar[tuple[str, ...]] = ()
    __record_defaults__: ClassVar[dict[str, Field]] = {}
    __record_kw_only__: ClassVar[bool] = False
    __record_required__: ClassVar[frozenset[str]] = frozenset()
    """The fields without a default."""
    __record_names__: ClassVar[frozenset[str]] = frozenset()
    """The field names, as a set (`replace` checks changes against it)."""
    __record_post_init__: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        names = cls.__record_fields__
        if not args and cls.__record_required__ <= kwargs.keys() <= cls.__record_names__:
            # The common case (events: keywords only, every field without a default among them).
            d = self.__dict__
            for name, dflt in cls.__record_defaults__.items():
                if name not in kwargs:
                    d[name] = dflt.default_factory() if dflt.default_factory is not None else dflt.default
            d.update(kwargs)
            if cls.__record_post_init__:
                self.__post_init__()  # type: ignore[attr-defined]
            return
        if args and cls.__record_kw_only__:
            raise TypeError(f"{cls.__name__}() takes keyword arguments only")
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, {len(args)} given")
        d = self.__dict__
        for name, v in zip(names, args, strict=False):
            d[name] = v
        defaults = cls.__record_defaults__
        for name in names[len(args) :]:
            if name in kwargs:
                d[name] = kwargs.pop(name)
                continue
            f = defaults.get(name)
            if f is None:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
            d[name] = f.default_factory() if f.default_factory is not None else f.default
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected or repeated arguments {sorted(kwargs)}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={self.__dict__.get(n)!r}" for n in type(self).__record_fields__)
        return f"{type(self).__qualname__}({args})"


class Value(_Base):
    """Base of `@value` records: immutable, equal and hashed by their fields."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[Any, ...]:
        d = self.__dict__
        return tuple(d[n] for n in type(self).__record_fields__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class Record(_Base):
    """Base of `@record` classes: mutable, compared by identity."""

    __slots__ = ()


def _define(cls: type[_T], base: type, kw_only: bool) -> type[_T]:
    if not issubclass(cls, base):
        raise TypeError(f"{cls.__name__} must derive from elaunch.values.{base.__name__}")
    names: list[str] = list(getattr(cls, "__record_fields__", ()))  # the nearest record base's, inherited
    defaults: dict[str, Field] = dict(getattr(cls, "__record_defaults__", {}))
    # Not inspect.get_annotations: importing inspect is what this module avoids (5 ms).
    for n, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if "ClassVar" in str(annotation):
            continue
        if n not in names:
            names.append(n)
        if n in cls.__dict__:
            d = cls.__dict__[n]
            defaults[n] = d if isinstance(d, Field) else Field(d)
            if isinstance(d, Field):
                if d.default is _MISSING:
                    delattr(cls, n)
                else:
                    setattr(cls, n, d.default)
    if not kw_only:
        seen_default = False
        for n in names:
            if n in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"{cls.__name__}: field {n!r} without a default follows one with a default")
    cls.__record_fields__ = tuple(names)  # type: ignore[attr-defined]
    cls.__record_defaults__ = defaults  # type: ignore[attr-defined]
    cls.__record_kw_only__ = kw_only  # type: ignore[attr-defined]
    cls.__record_required__ = frozenset(n for n in names if n not in defaults)  # type: ignore[attr-defined]
    cls.__record_names__ = frozenset(names)  # type: ignore[attr-defined]
    cls.__record_post_init__ = hasattr(cls, "__post_init__")  # type: ignore[attr-defined]
    setattr(cls, "__match_args__", tuple(names))  # noqa: B010 (mypy refuses the assignment)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[_T]) -> type[_T]:
    """An immutable record class (a subclass of `Value`); see the module doc."""
    return _define(cls, Value, kw_only=False)


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """A mutable record class (a subclass of `Record`); see the module doc."""
    return _define(cls, Record, kw_only=False)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
def event_class(cls: type[_T]) -> type[_T]:
    """An immutable keyword-only record class (events: see elaunch/events.py)."""
    return _define(cls, _Base, kw_only=True)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record or record class, in order."""
    return tuple(obj.__record_fields__)


def replace(obj: _T, **changes: Any) -> _T:
    """A copy of record `obj` with `changes` (field names only); `__init__` is not re-run."""
    if not changes.keys() <= type(obj).__record_names__:  # type: ignore[attr-defined]
        unknown = changes.keys() - type(obj).__record_names__  # type: ignore[attr-defined]
        raise TypeError(f"{type(obj).__name__} has no field(s) {sorted(unknown)}")
    new = object.__new__(type(obj))
    d = new.__dict__
    d.update(obj.__dict__)
    d.update(changes)
    return new


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of record `obj` as a dict (values as they are: nested records stay records)."""
    return {n: obj.__dict__[n] for n in type(obj).__record_fields__}
