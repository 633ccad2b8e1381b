"""options.build_config: raw options in, one nested validated LaunchConfig out (or ConfigError)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from elaunch.cli import parse
from elaunch.config import WatchConfig
from elaunch.errors import ConfigError
from elaunch.options import build_config, random_run_id

pytestmark = pytest.mark.timeout(10)


def config(tmp_path: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    script = tmp_path / "t.py"
    script.write_text("")
    opts, sources = parse([*args, str(script)], env or {})
    return build_config(opts, sources, {"PATH": "/usr/bin", **(env or {})})


def test_random_run_id_is_a_uuid4() -> None:
    ids = {random_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_standalone_is_a_local_rendezvous_on_a_free_port(tmp_path: Path) -> None:
    c = config(tmp_path, "--standalone", "--nproc-per-node", "3")
    assert (c.rdzv.backend, c.rdzv.master_port, c.rdzv.standalone, c.nproc_per_node) == ("local", 0, True, 3)
    assert uuid.UUID(c.run_id).version == 4


def test_static_nodes_meet_at_the_master(tmp_path: Path) -> None:
    c = config(tmp_path, "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29511")
    assert c.rdzv.backend == "static" and c.rdzv.node_rank == 1
    assert (c.rdzv.endpoint.host, c.rdzv.endpoint.port) == ("10.0.0.1", 29511)  # type: ignore[union-attr]


def test_node_rank_is_a_preference_only_when_given(tmp_path: Path) -> None:
    base = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1")
    assert config(tmp_path, *base).rdzv.node_rank is None
    assert config(tmp_path, *base, "--node-rank", "1").rdzv.node_rank == 1
    assert config(tmp_path, *base, env={"PET_NODE_RANK": "0"}).rdzv.node_rank == 0


def test_rdzv_conf_is_parsed_once_into_settings(tmp_path: Path) -> None:
    c = config(tmp_path, "--nnodes", "2", "--master-port", "29511", "--rdzv-conf", "timeout=7,read_timeout=3")
    assert (c.rdzv.settings.join_timeout, c.rdzv.settings.read_timeout) == (7.0, 3.0)  # static reads `timeout`
    c = config(tmp_path, "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h", "--rdzv-conf", "timeout=7")
    assert c.rdzv.settings.join_timeout == 600.0  # as torch's c10d handler, which does not read it


def test_output_options_are_one_value(tmp_path: Path) -> None:
    c = config(tmp_path, "--tee", "0:3", "--ranks-filter", "1-2", "--no-live")
    assert c.output.files and c.output.tee.for_rank(0) == 3 and not c.output.redirects.any
    assert c.output.ranks_filter == frozenset({1, 2}) and c.output.live is False


def test_etcd_certificates_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    etcd = ("--nnodes", "2", "--rdzv-backend", "etcd", "--rdzv-endpoint", "h")
    c = config(tmp_path, *etcd, "--rdzv-conf", f"protocol=https,cacert={ca}")
    assert c.rdzv.etcd is not None and c.rdzv.etcd.ca_cert == str(ca) and c.rdzv.endpoint.port == 2379  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="no such file"):
        config(tmp_path, *etcd, "--rdzv-conf", f"protocol=https,cacert={tmp_path / 'none.pem'}")


def test_supervision_options(tmp_path: Path) -> None:
    s = config(tmp_path).supervision
    assert (s.hang_timeout, s.startup_limit, s.no_requeue_code, s.restart_backoff, s.file_timer) == (
        None, None, 93, 0.0, False)  # fmt: skip
    s = config(
        tmp_path, "--hang-timeout", "30", "--restart-backoff", "2:20", "--no-requeue-exit-code", "77",
        "--progress-pattern", r"step (?P<step>\d+)", env={"TORCHELASTIC_ENABLE_FILE_TIMER": "1"},
    ).supervision  # fmt: skip
    assert (s.hang_timeout, s.startup_limit, s.restart_backoff, s.restart_backoff_max) == (30.0, 600.0, 2.0, 20.0)
    assert s.no_requeue_code == 77 and s.file_timer and s.progress_pattern == r"step (?P<step>\d+)"
    assert (
        config(tmp_path, "--startup-timeout", "1200", env={"ELAUNCH_HANG_TIMEOUT": "5"}).supervision.startup_limit
        == 1200
    )
    for args, message in [
        (("--hang-timeout", "soon"), "--hang-timeout: expected a number of seconds"),
        (("--startup-timeout", "-1"), "--startup-timeout: must be greater than 0"),
        (("--restart-backoff", "5:1"), "--restart-backoff: MAX must not be less than BASE"),
        (("--no-requeue-exit-code", "0"), "--no-requeue-exit-code: 0 means success"),
        (("--no-requeue-exit-code", "300"), "--no-requeue-exit-code: must be between 0 and 255"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config(tmp_path, *args)


def test_standby_is_elaunchs_own_and_needs_an_elastic_backend(tmp_path: Path) -> None:
    base = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1")
    assert config(tmp_path, *base).rdzv.standby == 0
    assert config(tmp_path, *base, "--standby", "2").rdzv.standby == 2
    assert config(tmp_path, *base, env={"ELAUNCH_STANDBY": "1"}).rdzv.standby == 1
    one = config(tmp_path, "--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1", "--standby", "1")
    assert (one.rdzv.backend, one.rdzv.max_nodes, one.rdzv.standby) == ("c10d", 1, 1)  # one active node, one spare
    with pytest.raises(ConfigError, match="--standby: expected a whole number"):
        config(tmp_path, *base, "--standby", "x")
    with pytest.raises(ConfigError, match="--standby needs --rdzv-backend c10d or etcd"):
        config(tmp_path, "--nnodes", "2", "--master-port", "29511", "--standby", "1")
    assert config(tmp_path, "--stand").rdzv.standalone  # torchrun's prefix of --standalone keeps its meaning


def test_health_check_options(tmp_path: Path) -> None:
    c = config(tmp_path)
    assert (c.health_check, c.health_check_timeout) == (None, 60.0)
    c = config(tmp_path, "--health-check", "builtin", "--health-check-timeout", "2.5")
    assert (c.health_check, c.health_check_timeout) == ("builtin", 2.5)
    with pytest.raises(ConfigError, match="--health-check-timeout"):
        config(tmp_path, "--health-check", "true", "--health-check-timeout", "0")


def test_watch_settings_and_torchruns_health_port_variable(tmp_path: Path) -> None:
    c = config(tmp_path)
    assert c.watch == WatchConfig()  # off, 30 s reports, 1.5x slower for 60 s
    assert c.watch.health_port is None
    c = config(tmp_path, env={"TORCHELASTIC_HEALTH_CHECK_PORT": "0"})
    assert (c.watch.health_port, c.watch.health_addr, c.sources["health_port"]) == (0, "127.0.0.1", "environment")
    c = config(tmp_path, "--health-port", "0", "--health-addr", "::1", "--progress-interval", "5",
               "--straggler-factor", "2", "--straggler-window", "0", env={"TORCHELASTIC_HEALTH_CHECK_PORT": "1"})  # fmt: skip
    assert c.watch == WatchConfig(health_port=0, health_addr="::1", progress_interval=5.0, straggler_factor=2.0,
                                  straggler_window=0.0)  # fmt: skip
    assert c.sources["health_port"] == "option"


def test_health_addr_without_a_port_is_a_warning(tmp_path: Path) -> None:
    c = config(tmp_path, "--health-addr", "0.0.0.0")
    assert c.watch.health_port is None
    assert c.warnings == ("--health-addr has no effect without --health-port (the endpoint is off)",)
