"""values.py: records with dataclass semantics, defined without compiling anything at import."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import pytest

from elaunch.values import (
    FrozenInstanceError,
    Record,
    Value,
    asdict,
    event_class,
    field,
    fields,
    record,
    replace,
    value,
)

pytestmark = pytest.mark.timeout(30)


@value
class Point(Value):
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    extra: dict[str, int] = field(default_factory=dict)
    KIND: ClassVar[str] = "point"


@value
class Point3(Point):
    z: int = 0


@value
class Checked(Value):
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


@record
class Counter(Record):
    n: int = 0


@event_class
class Happened(Value):
    what: str
    when: float = 1.0


def test_fields_defaults_and_factories() -> None:
    p = Point(1)
    assert fields(Point) == ("x", "y", "tags", "extra") and fields(Point3)[-1] == "z"
    assert (p.x, p.y, p.tags, p.extra) == (1, 0, (), {})
    assert Point(1).extra is not Point(1).extra  # a factory runs per instance
    assert Point3(1, 2, z=3) == Point3(x=1, y=2, tags=(), extra={}, z=3)
    assert Point.KIND == "point" and "KIND" not in fields(Point)
    assert asdict(Point(2, 3)) == {"x": 2, "y": 3, "tags": (), "extra": {}}


def test_immutable_equal_hashable_repr() -> None:
    p = Point(1, 2, ("a",))
    with pytest.raises(FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.y  # type: ignore[misc]
    assert p == Point(1, 2, ("a",)) and p != Point(1, 3, ("a",)) and p != Point3(1, 2, ("a",))
    assert hash(Checked(1)) == hash(Checked(1)) and {Checked(1): "a"}[Checked(1)] == "a"
    assert repr(p) == "Point(x=1, y=2, tags=('a',), extra={})"


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated"):
        Point(1, w=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 4 arguments"):
        Point(1, 2, (), {}, 5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="keyword arguments only"):
        Happened("x")  # type: ignore[misc]
    with pytest.raises(ValueError, match="n must be"):
        Checked(-1)


def test_keywords_only_as_events_are_made() -> None:
    """The common path (keywords, every field without a default given) checks as much as the other."""
    p = Point(x=1, extra={"a": 1})
    assert (p.x, p.y, p.tags, p.extra) == (1, 0, (), {"a": 1})
    assert Point(x=1).extra is not Point(x=1).extra
    assert Point3(z=3, x=1) == Point3(1, 0, (), {}, 3)
    assert Happened(what="x", when=2.0).when == 2.0 and Happened(what="x").when == 1.0
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point(y=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated"):
        Point(x=1, w=2)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="n must be"):
        Checked(n=-1)
    assert Checked(n=2).n == 2


def test_replace_and_mutable_records() -> None:
    p = replace(Point(1, 2), y=5)
    assert p == Point(1, 5)
    with pytest.raises(TypeError, match="no field"):
        replace(p, w=1)
    c = Counter()
    c.n += 1
    assert c.n == 1 and c != Counter(1)  # mutable records compare by identity
    assert Happened(what="x").when == 1.0


def test_non_default_after_default_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):

        @value
        class Bad(Value):
            a: int = 0
            b: int  # type: ignore[misc]


def test_the_launch_path_does_not_import_dataclasses() -> None:
    # The point of values.py: `import dataclasses` (and inspect) is 5 ms of every launch.
    code = "import sys, elaunch.cli, elaunch.options, elaunch.launch; print('dataclasses' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True)
    assert out.stdout.strip() == "False"
