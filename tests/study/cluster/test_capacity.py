"""Work the cluster cannot place fails loudly (study.cluster.capacity): the demand of a trial or task against the
nodes' resources, and the one line a user gets."""

from __future__ import annotations

import io

import pytest

from study.cluster import capacity
from study.config.load import load_config
from study.config.schema import ResourcesConfig
from tests.helpers.cli import TINY


def trial(*overrides: str) -> capacity.Demand:
    return capacity.trial_demand(load_config(None, TINY + list(overrides)))


def test_the_issue_example_two_workers_on_two_cpus():
    line = capacity.shortfall(trial("train.workers=2"), [{"CPU": 2.0}], "the local Ray")
    assert line == ("a trial needs 2.5 CPUs (train.workers=2 × 1 CPU + 0.5 for the trial); the local Ray has 2 "
                    "(lower train.workers or search.resources_per_trial)")
    assert capacity.shortfall(trial("train.workers=2"), [{"CPU": 3.0}], "the local Ray") is None


def test_single_process_trials_tasks_gpus_and_the_largest_node():
    assert capacity.shortfall(trial(), [{"CPU": 1.0}], "x") is None
    line = capacity.shortfall(trial("search.resources_per_trial={cpu: 1, gpu: 1}"), [{"CPU": 8.0}], "the local Ray")
    assert line == ("a trial needs 1 GPU (search.resources_per_trial.gpu=1); the local Ray has 0 (lower "
                    "search.resources_per_trial)")
    task = capacity.task_demand(ResourcesConfig(cpu=4), "a retrain task", "retrain.resources")
    assert capacity.shortfall(task, [{"CPU": 2.0}], "the local Ray") == (
        "a retrain task needs 4 CPUs (retrain.resources.cpu=4); the local Ray has 2 (lower retrain.resources)")
    # 2 + 2 CPUs in the cluster, but one process of 3 fits on no node.
    task = capacity.task_demand(ResourcesConfig(cpu=3), "a retrain task", "retrain.resources")
    assert "the largest node of the cluster has 2" in capacity.shortfall(task, [{"CPU": 2.0}, {"CPU": 2.0}],
                                                                         "the cluster")


def test_a_fixed_cluster_refuses_at_once_and_a_joined_one_waits_then_stops(monkeypatch):
    demand = trial("train.workers=2")
    monkeypatch.setattr(capacity, "alive_nodes", lambda: [{"CPU": 2.0}])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(capacity.PlacementError, match="the local Ray has 2"):
        capacity.check_placeable(demand)

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # joined: an autoscaler may add nodes
    capacity.check_placeable(demand)  # no error now
    monkeypatch.setattr(capacity, "POLL_S", 0.05)
    stream = io.StringIO()
    stopped = []
    monkeypatch.setattr(capacity, "stop", stopped.append)
    with capacity.watch(demand, timeout_s=0.3, stream=stream):
        import time

        deadline = time.monotonic() + 10
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "waiting for resources" in stream.getvalue() and "the cluster has 2" in stream.getvalue()
    (reason,) = stopped
    assert isinstance(reason, capacity.PlacementError) and "search.placement_timeout_s=0.3" in str(reason)


def test_the_wait_is_reported_every_report_interval_and_forgotten_once_the_demand_fits(monkeypatch):
    """A joined cluster: one line every REPORT_S (30 s by default) while the demand does not fit, each giving how long
    it has waited; a cluster that grew in time resets the clock (no stop); search.placement_timeout_s is 15 min by
    default. Intervals are scaled down here (REPORT_S 0.2 s, POLL_S 0.02 s)."""
    import re
    import time

    from study.config.schema import SearchConfig

    assert capacity.REPORT_S == 30.0 and SearchConfig().placement_timeout_s == 900.0
    demand = trial("train.workers=2")
    nodes = [{"CPU": 2.0}]
    monkeypatch.setattr(capacity, "alive_nodes", lambda: list(nodes))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr(capacity, "POLL_S", 0.02)
    monkeypatch.setattr(capacity, "REPORT_S", 0.2)
    stopped, stream = [], io.StringIO()
    monkeypatch.setattr(capacity, "stop", stopped.append)
    with capacity.watch(demand, timeout_s=30.0, stream=stream):
        time.sleep(1.1)
        nodes.append({"CPU": 2.0})  # the autoscaler added a node: the trial fits
        time.sleep(0.5)
    lines = stream.getvalue().splitlines()
    assert 4 <= len(lines) <= 7, lines  # ~1.1 s / 0.2 s, then nothing once the demand fits
    assert all(line.startswith("waiting for resources (") and "the cluster has 2 " in line for line in lines)
    waited = [float(re.match(r"waiting for resources \((\d+) s", line).group(1)) for line in lines]
    assert waited == sorted(waited) and waited[0] == 0
    assert not stopped  # it fitted before search.placement_timeout_s
