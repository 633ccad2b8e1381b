"""elaunch.run's options and torch's LaunchConfig -> the CLI's raw options (pure; launches are in tests/integration)."""

from __future__ import annotations

import enum

import pytest

from elaunch.api import options_for, pickle_call
from elaunch.errors import ConfigError, NotSupportedError
from elaunch.launcher import LaunchConfig
from elaunch.launcher.api import config_options
from elaunch.options import build_config


def test_options_for_fills_the_cli_defaults_and_marks_what_was_given() -> None:
    opts, sources = options_for({"nproc_per_node": 4, "no_live": True, "tee": 3, "ranks_filter": [0, 2]})
    assert opts["nproc_per_node"] == "4" and sources["nproc_per_node"] == "option"
    assert opts["no_live"] is True and opts["tee"] == "3" and opts["ranks_filter"] == "0,2"
    assert opts["nnodes"] == "1:1" and sources["nnodes"] == "default"
    assert opts["standalone"] is False


def test_options_for_refuses_unknown_and_script_options() -> None:
    with pytest.raises(ConfigError, match="did you mean rdzv_backend"):
        options_for({"rdzv_backnd": "c10d"})
    with pytest.raises(ConfigError, match=r"not an option of elaunch\.run"):
        options_for({"training_script": "x.py"})


def test_pickle_call_names_the_keyword_that_cannot_be_pickled() -> None:
    import threading

    with pytest.raises(ConfigError, match=r"keyword argument 'lock' \(type _thread.lock\)"):
        pickle_call(print, (1,), {"lock": threading.Lock()})


class Std(enum.IntEnum):
    NONE = 0
    OUT = 1
    ALL = 3


class DefaultLogsSpecs:
    """The attributes of torch's DefaultLogsSpecs (torch is not imported in unit tests)."""

    def __init__(self, log_dir: str, redirects: object, tee: object, local_ranks_filter: set[int] | None) -> None:
        self._root_log_dir, self._redirects, self._tee, self._local_ranks_filter = (
            log_dir,
            redirects,
            tee,
            local_ranks_filter,
        )


class AffinityMode(str, enum.Enum):
    NODE = "node"


class NumaOptions:
    affinity_mode = AffinityMode.NODE


def test_torch_launch_config_maps_to_the_cli_options(tmp_path: object) -> None:
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=2,
        nproc_per_node=3,
        run_id="job",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:29400",
        rdzv_configs={"join_timeout": 30},
        max_restarts=2,
        log_line_prefix_template="[${rank}]",
        duplicate_stdout_filters=["loss", "a,b"],
        numa_options=NumaOptions(),
        logs_specs=DefaultLogsSpecs(str(tmp_path), Std.ALL, {0: Std.OUT}, {0, 1}),
        shutdown_timeout=5,
    )
    opts = config_options(config)
    assert opts["nnodes"] == "1:2" and opts["rdzv_id"] == "job" and opts["role"] == "default_role"
    assert opts["rdzv_conf"] == "join_timeout=30,timeout=900"  # torch's rdzv_timeout default
    assert opts["duplicate_stdout_filters"] == "loss,a,,b"
    assert opts["numa_binding"] == "node"
    assert (opts["log_dir"], opts["redirects"], opts["tee"], opts["local_ranks_filter"]) == (
        str(tmp_path),
        "3",
        "0:1",
        "0,1",
    )
    given, sources = options_for({**opts, "nproc_per_node": 3, "numa_binding": None})
    given["training_script"], given["training_script_args"] = __file__, ()
    built = build_config(given, sources, {})
    assert built.rdzv.run_id == "job" and built.max_restarts == 2 and built.shutdown_timeout == 5
    assert built.output.duplicate_filters == {1: ("loss", "a,b")}


def test_torch_launch_config_refusals() -> None:
    with pytest.raises(NotSupportedError, match="metrics_cfg"):
        config_options(LaunchConfig(1, 1, 1, metrics_cfg={"x": "y"}))
    with pytest.raises(NotSupportedError, match="logs_specs"):
        config_options(LaunchConfig(1, 1, 1, logs_specs=object()))
    with pytest.raises(ValueError, match="shutdown_timeout"):
        LaunchConfig(1, 1, 1, shutdown_timeout=-1)
    assert config_options(LaunchConfig(1, 1, 1))["rdzv_id"]  # a random id when none is given


def test_without_cloudpickle_module_functions_pickle_and_lambdas_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle
    import sys

    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # `import cloudpickle` raises ImportError
    fn, args, kwargs = pickle.loads(pickle_call(len, ([1, 2],), {}))
    assert fn(*args, **kwargs) == 2
    with pytest.raises(ConfigError, match=r"the function '.*<lambda>' \(type function\).*install cloudpickle"):
        pickle_call(lambda: 1, (), {})
