"""Parsing of option values: pure functions, table-driven."""

from __future__ import annotations

import signal

import pytest

from elaunch import config as cfg
from elaunch.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", (1, 1)), ("2:4", (2, 4)), (" 3 ", (3, 3)), ("1:1", (1, 1))],
)
def test_nnodes_ok(value: str, expected: tuple[int, int]) -> None:
    assert cfg.parse_nnodes(value) == expected


@pytest.mark.parametrize("value", ["4:2", "0", "a:b", "1:2:3", "", "-1", "0:2", "1.5"])
def test_nnodes_bad(value: str) -> None:
    with pytest.raises(ConfigError, match="--nnodes"):
        cfg.parse_nnodes(value)


def test_nproc_forms() -> None:
    devices = {"cpu": 8, "gpu": 0, "xpu": 0}
    assert cfg.parse_nproc("4", devices) == 4
    assert cfg.parse_nproc("cpu", devices) == 8
    assert cfg.parse_nproc("auto", devices) == 8
    assert cfg.parse_nproc("auto", {"cpu": 8, "gpu": 2}) == 2
    assert cfg.parse_nproc("gpu", {"cpu": 8, "gpu": 3}) == 3
    with pytest.raises(ConfigError, match="no CUDA GPUs"):
        cfg.parse_nproc("gpu", devices)
    for bad in ("0", "-1", "abc", ""):
        with pytest.raises(ConfigError, match="--nproc-per-node"):
            cfg.parse_nproc(bad, devices)


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("node1", "node1", 29400),
        ("node1:1234", "node1", 1234),
        ("[::1]:5", "::1", 5),
        ("[fe80::1]", "fe80::1", 29400),
        ("10.0.0.1:0", "10.0.0.1", 0),
    ],
)
def test_endpoint_ok(value: str, host: str, port: int) -> None:
    ep = cfg.parse_endpoint(value, 29400)
    assert ep is not None and (ep.host, ep.port) == (host, port)


@pytest.mark.parametrize("value", ["node1:", "node1:abc", "::1:80", "node1:70000", ":80", "a b:1"])
def test_endpoint_bad(value: str) -> None:
    with pytest.raises(ConfigError, match="--rdzv-endpoint"):
        cfg.parse_endpoint(value, 29400)


def test_endpoint_empty_is_none() -> None:
    assert cfg.parse_endpoint("  ", 29400) is None


def test_rdzv_conf() -> None:
    conf = cfg.parse_rdzv_conf("join_timeout=10, last_call_timeout=0.5,is_host=true,keep_alive_max_attempt=4")
    assert conf == {"join_timeout": 10.0, "last_call_timeout": 0.5, "is_host": True, "keep_alive_max_attempt": 4}
    assert cfg.parse_rdzv_conf("") == {}


def test_rdzv_conf_quotes_and_unknown_keys() -> None:
    # torchrun's launcher tests pass --rdzv-conf='join_timeout=5,last_call_timeout=1,timeout=5' with the quotes.
    warnings: list[str] = []
    conf = cfg.parse_rdzv_conf("'join_timeout=5,last_call_timeout=1,timeout=5'", warnings)
    assert conf == {"join_timeout": 5.0, "last_call_timeout": 1.0, "timeout": 5.0} and warnings == []
    assert cfg.parse_rdzv_conf("read_timeout=\"7\", is_host='true'", warnings) == {"read_timeout": 7.0, "is_host": True}
    assert cfg.parse_rdzv_conf("join_timout=9,bogus=1,read_timeout=2", warnings) == {"read_timeout": 2.0}
    assert warnings[0] == "--rdzv-conf join_timout: no backend reads this key; ignored (did you mean join_timeout?)"
    assert warnings[1].startswith("--rdzv-conf bogus: no backend reads this key; ignored (known: ca_cert, ")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("join_timeout", "key=value"),
        ("=3", "key=value"),
        ("join_timeout=abc", "expected a number"),
        ("join_timeout=-1", "greater than 0"),
        ("is_host=maybe", "true or false"),
    ],
)
def test_rdzv_conf_bad(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg.parse_rdzv_conf(value)


def test_std_spec() -> None:
    assert cfg.parse_std_spec("3", "-r").for_rank(5) == 3
    spec = cfg.parse_std_spec("0:3,1:1", "-r")
    assert (spec.for_rank(0), spec.for_rank(1), spec.for_rank(2)) == (3, 1, 0)
    with pytest.raises(ConfigError):
        cfg.parse_std_spec("4", "-r")
    with pytest.raises(ConfigError):
        cfg.parse_std_spec("0:x", "-t")


def test_rank_set() -> None:
    assert cfg.parse_rank_set("0,2-4", "--ranks-filter") == frozenset({0, 2, 3, 4})
    assert cfg.parse_rank_set("", "--ranks-filter") is None
    with pytest.raises(ConfigError):
        cfg.parse_rank_set("4-2", "--ranks-filter")
    with pytest.raises(ConfigError):
        cfg.parse_rank_set("a", "--ranks-filter")


def test_signals() -> None:
    assert cfg.parse_signals("SIGTERM,int,SIGUSR1") == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    with pytest.raises(ConfigError, match="unknown signal"):
        cfg.parse_signals("SIGNOPE")
    with pytest.raises(ConfigError, match="cannot be handled"):
        cfg.parse_signals("SIGKILL")


def test_local_rank_macro() -> None:
    assert cfg.substitute_local_rank(("--out=${local_rank}.txt", "x"), 3) == ("--out=3.txt", "x")


def test_filter_lists_follow_torchrun() -> None:
    assert cfg.parse_filter_list("") == ()
    assert cfg.parse_filter_list("apple,orange") == ("apple", "orange")
    assert cfg.parse_filter_list("a,,b,c") == ("a,b", "c")


def test_progress_pattern() -> None:
    assert cfg.parse_progress_pattern(None) is None
    assert cfg.parse_progress_pattern("") is None
    pattern = r"step (?P<step>\d+)/(?P<total>\d+)"
    assert cfg.parse_progress_pattern(pattern) == pattern
    with pytest.raises(ConfigError, match="named group"):
        cfg.parse_progress_pattern(r"step (\d+)")
    with pytest.raises(ConfigError, match="not a regular expression"):
        cfg.parse_progress_pattern("step (?P<step>")
