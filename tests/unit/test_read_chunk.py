"""`workers.read_chunk`: a worker stream's bytes as they are, in chunks of at most READ_MAX."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from elaunch.workers import F_SETPIPE_SZ, READ_MAX, READ_SIZE, read_chunk


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, READ_MAX)  # as the agent's pipes
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_a_short_write_is_one_chunk(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write_all(w, b"\r 40%|####  | 40/100 [00:01<00:01, 39.5it/s]")
    assert read_chunk(r) == b"\r 40%|####  | 40/100 [00:01<00:01, 39.5it/s]"
    with pytest.raises(BlockingIOError):
        read_chunk(r)


def test_more_than_one_read_size_is_read_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    data = bytes(range(256)) * (3 * READ_SIZE // 256) + b"tail\n"
    write_all(w, data)
    assert read_chunk(r) == data


def test_an_exact_multiple_of_the_read_size_then_nothing(pipe: tuple[int, int]) -> None:
    r, w = pipe
    data = b"x" * (2 * READ_SIZE)
    write_all(w, data)
    assert read_chunk(r) == data  # the read that finds nothing more ends the chunk, not the stream
    write_all(w, b"next\n")
    assert read_chunk(r) == b"next\n"


def test_a_flood_comes_in_chunks_of_at_most_read_max_with_nothing_lost(tmp_path: Path) -> None:
    data = os.urandom(READ_MAX + READ_MAX // 2 + 7)  # more than a pipe holds: a file
    (tmp_path / "flood").write_bytes(data)
    fd = os.open(tmp_path / "flood", os.O_RDONLY)
    try:
        first = read_chunk(fd)
        assert len(first) == READ_MAX
        assert first + read_chunk(fd) == data
        assert read_chunk(fd) == b""
    finally:
        os.close(fd)


def test_end_of_stream_is_empty() -> None:
    r, w = os.pipe()
    try:
        write_all(w, b"last\n")
        os.close(w)
        assert read_chunk(r) == b"last\n"
        assert read_chunk(r) == b""
    finally:
        os.close(r)
