"""`elaunch rdzv-server`'s decisions: which keys belong to which job, when a job is over, its options."""

from __future__ import annotations

import pytest

from elaunch.errors import ConfigError
from elaunch.rdzvserver import JobSeen, ServerConfig, build_server_config, end_line, job_ended, jobs_in
from elaunch.rendezvous.keys import Keys

CFG = ServerConfig(linger=10.0, abandon_after=100.0)


def test_keys_are_grouped_by_run_id_and_foreign_keys_ignored() -> None:
    a, b = Keys("job a/1"), Keys("b")
    keys = [a.open_round, a.hb("n1"), b.closed, "/other/x", "/elaunch/", "torchelastic/x"]
    assert jobs_in(keys) == {"job a/1": [a.open_round, a.hb("n1")], "b": [b.closed]}


def test_a_closed_job_ends_when_every_node_said_goodbye_or_after_the_linger() -> None:
    seen = JobSeen("j", since=0.0, beats=5, beat_at=1.0, closed_at=2.0)
    assert job_ended(seen, closed=True, goodbyes=2, expected=2, now=2.0, cfg=CFG) == "ended"
    assert job_ended(seen, closed=True, goodbyes=1, expected=2, now=5.0, cfg=CFG) is None  # one is still leaving
    assert job_ended(seen, closed=True, goodbyes=1, expected=2, now=12.0, cfg=CFG) == "ended"  # it died


def test_a_job_whose_heartbeats_stopped_is_abandoned_and_a_running_one_is_not() -> None:
    seen = JobSeen("j", since=0.0, beats=5, beat_at=1.0)
    assert job_ended(seen, closed=False, goodbyes=0, expected=2, now=50.0, cfg=CFG) is None
    how = job_ended(seen, closed=False, goodbyes=0, expected=2, now=101.5, cfg=CFG)
    assert how is not None and how.startswith("abandoned")


def test_the_end_line_says_what_ended_and_what_was_removed() -> None:
    line = end_line("j", "ended", "the job finished on all 2 nodes", 1, 2, 15)
    assert (
        line
        == "job 'j' ended: the job finished on all 2 nodes (1 round(s), 2 node(s) in its last round); removed its 15 key(s)"
    )


def test_options_are_checked_before_anything_starts() -> None:
    assert build_server_config(["--port", "0", "--linger", "3"]) == ServerConfig(port=0, linger=3.0)
    for bad in (["--port", "x"], ["--port", "70000"], ["--linger", "-1"], ["--bogus"]):
        with pytest.raises(ConfigError):
            build_server_config(bad)
