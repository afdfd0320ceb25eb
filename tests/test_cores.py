"""The adaptive thread count: it follows the cores other processes keep busy, ignores a
one-reading spike, stays put when pinned, and training logs the count it used."""

from __future__ import annotations

import functools
import json
import os

import pytest
from conftest import invoke, run_main

from msctr import cores
from msctr.cores import AdaptiveThreads, busy_seconds, usable_cpus


class Machine:
    """A fake clock, this process's CPU time and the CPUs' busy time, stepped by the test."""

    def __init__(self) -> None:
        self.now, self.own, self.busy = 0.0, 0.0, 0.0
        self.threads: list[int] = []

    def second(self, own_cores: float, other_cores: float) -> None:
        self.now += 1.0
        self.own += own_cores
        self.busy += own_cores + other_cores

    def governor(self, cores: int = 4, pinned: int | None = None, start: int = 4):
        return AdaptiveThreads(
            pinned,
            cores=cores,
            set_threads=self.threads.append,
            get_threads=lambda: start,
            clock=lambda: self.now,
            own_seconds=lambda: self.own,
            busy=lambda: self.busy,
            probe=0,
        )


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # conftest pins it for other tests


def test_threads_follow_the_cores_others_keep_busy():
    m = Machine()
    g = m.governor()
    assert g.adaptive and g.threads == 4
    for _ in range(2):  # another process busy on 2.4 cores: two readings in a row
        m.second(own_cores=1.6, other_cores=2.4)
        g.tick()
    assert g.threads == 2 and m.threads == [2]
    for _ in range(2):  # it ended
        m.second(own_cores=2.0, other_cores=0.1)
        g.tick()
    assert g.threads == 4 and m.threads == [2, 4]


def test_a_single_busy_reading_changes_nothing():
    m = Machine()
    g = m.governor()
    m.second(own_cores=1.0, other_cores=3.0)
    g.tick()
    m.second(own_cores=4.0, other_cores=0.0)
    g.tick()
    assert g.threads == 4 and m.threads == []


def test_at_least_one_thread_and_half_a_core_counts():
    m = Machine()
    g = m.governor(cores=2, start=2)
    for _ in range(2):
        m.second(own_cores=0.5, other_cores=6.0)  # heavily oversubscribed
        g.tick()
    assert g.threads == 1
    m2 = Machine()
    g2 = m2.governor(cores=2, start=2)
    for _ in range(2):
        m2.second(own_cores=1.7, other_cores=0.3)  # background noise: stays
        g2.tick()
    assert g2.threads == 2 and m2.threads == []


def test_readings_wait_for_a_second():
    m = Machine()
    g = m.governor()
    for _ in range(10):  # steps within one second: no reading
        m.now += 0.05
        m.busy += 0.05 * 4
        g.tick()
    assert g.threads == 4 and m.threads == []


def test_pinned_counts_never_change(monkeypatch):
    m = Machine()
    g = m.governor(pinned=2)
    assert not g.adaptive and m.threads == [2]
    for _ in range(3):
        m.second(own_cores=0.5, other_cores=3.5)
        g.tick()
    assert g.threads == 2 and m.threads == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    g = Machine().governor(start=3)
    assert not g.adaptive and g.threads == 3
    assert not Machine().governor(cores=1, start=1).adaptive


def test_mean_threads_since_last_take():
    m = Machine()
    g = m.governor()
    assert g.take_used() is None
    for own, other in [(4, 0), (2, 2), (2, 2), (2, 2)]:
        m.second(own_cores=own, other_cores=other)
        g.tick()
    assert g.take_used() == pytest.approx((4 + 4 + 2 + 2) / 4)
    assert g.take_used() is None


def test_reads_this_machine():
    cpus = {0}
    assert len(usable_cpus()) >= 1
    first = busy_seconds(cpus)
    assert first is not None and first >= 0
    assert busy_seconds(set()) == 0


def test_training_logs_the_thread_count_it_used(tmp_path, monkeypatch, capsys):
    """Through the CLI: under a fake load of 3 other cores on 4, the count drops to 1 within
    the run and every epoch's log line says the mean count used."""
    m = {"t": 0.0}

    def clock():
        m["t"] += 0.5  # each reading half a second after the one before
        return m["t"]

    calls: list[int] = []
    fake = functools.partial(
        AdaptiveThreads,
        cores=4,
        set_threads=calls.append,  # torch's own count is left alone
        get_threads=lambda: 4,
        clock=clock,
        own_seconds=lambda: m["t"],  # one core of ours
        busy=lambda: 4 * m["t"],  # all four busy
        probe=0,
    )
    monkeypatch.setattr("msctr.train.loop.AdaptiveThreads", fake)
    invoke("prepare", "synthetic", "--out", str(tmp_path / "syn"), "--rows", "3000")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\ndata: {tmp_path / 'syn'}\nout: {tmp_path / 'run'}\n"
        "models: [{name: dnn, label: DNN, params: {hidden: [8]}}]\n"
        "train: {epochs: 2, batch_size: 256, seeds: [0], max_steps_per_epoch: 4,\n"
        "        early_stopping: {patience: 5}}\n"
    )
    code, _, err = run_main(capsys, "train", str(recipe), "--no-eval")
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "run/DNN/seed_0/log.jsonl").open()]
    assert calls == [1]  # 4 cores busy, 1 of them ours: others take 3, one is left
    assert 1 < lines[0]["threads"] < 4 and lines[1]["threads"] == 1


def test_busy_time_of_chosen_cpus_without_niced_processes(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    stat.write_text(
        "cpu  9 9 9 9 9 9 9 9 0 0\n"
        f"cpu0 {hz} {2 * hz} {hz} 50 7 0 0 {hz} 0 0\n"  # user nice system idle iowait ... steal
        f"cpu1 {4 * hz} 0 0 50 0 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    monkeypatch.setattr(cores, "STAT", stat)
    assert busy_seconds({0}) == 3  # user + system + steal; idle and iowait are not busy
    assert busy_seconds({0}, niced=True) == 5
    assert busy_seconds({0, 1}) == 7


def test_a_first_reading_is_taken_at_once(monkeypatch):
    m = Machine()
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # others busy on 3 of 4 cores meanwhile, ours idle
        slept.append(seconds)
        m.now += seconds
        m.busy += 3 * seconds

    monkeypatch.setattr(cores.time, "sleep", sleep)
    g = AdaptiveThreads(
        None, cores=4, set_threads=m.threads.append, get_threads=lambda: 4,
        clock=lambda: m.now, own_seconds=lambda: m.own, busy=lambda: m.busy, probe=0.2,
    )  # fmt: skip
    assert slept == [0.2] and g.threads == 1 and m.threads == [1]


def test_cores_module_reads_proc_stat_only_on_linux(monkeypatch, tmp_path):
    monkeypatch.setattr(cores, "STAT", tmp_path / "missing")
    assert busy_seconds({0}) is None
    g = AdaptiveThreads(None, cores=2, set_threads=lambda n: None, get_threads=lambda: 2)
    assert not g.adaptive  # no /proc/stat: the count torch chose, unchanged
