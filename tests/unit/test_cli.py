"""Command-line parsing as torchrun's (argparse): prefixes, spellings, PET_* defaults, script arguments untouched."""

from __future__ import annotations

import pytest

from elaunch.cli import parse, split_argv
from elaunch.errors import ConfigError

pytestmark = pytest.mark.timeout(10)


def test_unambiguous_prefixes_and_both_spellings() -> None:
    opts, src = parse(["--nproc", "2", "--redirect=3", "--max_re", "4", "--stand", "t.py"], {})
    got = (opts["nproc_per_node"], opts["redirects"], opts["max_restarts"], opts["standalone"])
    assert got == ("2", "3", "4", True)
    assert src["nproc_per_node"] == src["redirects"] == src["standalone"] == "option"
    assert src["nnodes"] == "default" and opts["nnodes"] == "1:1"


@pytest.mark.parametrize(("prefix", "candidates"), [("--n", "--nnodes"), ("--rdzv", "--rdzv-backend")])
def test_ambiguous_prefix_names_the_candidates(prefix: str, candidates: str) -> None:
    with pytest.raises(ConfigError, match=f"ambiguous option: {prefix} could match .*{candidates}"):
        parse([prefix, "2", "t.py"], {})


def test_script_arguments_are_never_read() -> None:
    opts, _ = parse(["--nproc-per-node", "2", "t.py", "--n", "--nproc", "9", "-m", "--", "x"], {})
    assert opts["training_script"] == "t.py"
    assert opts["training_script_args"] == ("--n", "--nproc", "9", "-m", "--", "x")
    assert opts["nproc_per_node"] == "2" and opts["module"] is False


def test_option_values_that_look_like_options() -> None:
    own, rest = split_argv(["--rdzv-conf", "-x=1", "--max-restarts", "-1", "t.py", "a"])
    assert own == ["--rdzv-conf", "-x=1", "--max-restarts", "-1", "t.py"] and rest == ["a"]
    assert split_argv(["--", "t.py", "--x"]) == (["--", "t.py"], ["--x"])


def test_environment_defaults_and_the_command_line_wins() -> None:
    env = {"PET_NPROC_PER_NODE": "3", "PET_STANDALONE": "1", "ELAUNCH_NO_LIVE": "true", "PET_MAX_RESTARTS": "2"}
    opts, src = parse(["--max-restarts", "5", "t.py"], env)
    assert (opts["nproc_per_node"], src["nproc_per_node"]) == ("3", "environment")
    assert opts["standalone"] is True and opts["no_live"] is True and src["no_live"] == "environment"
    assert (opts["max_restarts"], src["max_restarts"]) == ("5", "option")
    assert parse(["t.py"], {"PET_STANDALONE": "0"})[0]["standalone"] is False


def test_bad_flag_in_the_environment() -> None:
    with pytest.raises(ConfigError, match="PET_STANDALONE='maybe'"):
        parse(["t.py"], {"PET_STANDALONE": "maybe"})


def test_unknown_option_and_missing_script() -> None:
    with pytest.raises(ConfigError, match="No such option '--bogus'"):
        parse(["--bogus", "t.py"], {})
    with pytest.raises(ConfigError, match="Missing argument 'TRAINING_SCRIPT'"):
        parse(["--nproc-per-node", "2"], {})
