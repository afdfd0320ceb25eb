"""benchmarks/whole_table.py: the projection's arithmetic, and one end-to-end run on tiny data."""

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def whole_table():
    sys.path.insert(0, str(BENCH))
    try:
        import whole_table

        yield whole_table
    finally:
        sys.path.remove(str(BENCH))


def _measured(rows: int, epoch: float, val: float, rest: float, gflops=50.0) -> dict:
    phases = {"data": 0.01, "forward": 0.03, "backward": 0.05, "optimizer": 0.01}
    return {
        "rows": rows,
        "gflops": gflops,
        "epoch_train_s": epoch,
        "val_score_s": val,
        "rest_s": rest,
        "step_phases_s": phases,
        "val_rows": rows // 10,
        "train_flops_per_row": 3e6,
        "eval_flops_per_row": 1e6,
    }


def test_projection_is_linear_in_rows_and_splits_the_epoch_by_phase(whole_table):
    assert whole_table.through_origin([(100, 10.0), (300, 30.0)], 4000) == pytest.approx(400.0)
    # least squares through the origin: the larger size weighs more
    slope = (100 * 12.0 + 300 * 30.0) / (100**2 + 300**2)
    assert whole_table.through_origin([(100, 12.0), (300, 30.0)], 4000) == pytest.approx(
        4000 * slope
    )
    small, big = _measured(100, 10.0, 1.0, 3.0), _measured(300, 30.0, 3.0, 9.0)
    p = whole_table.project("m", small, big, full=4000, epochs=4, seeds=10, gflops=50.0)
    assert p["epoch_s"] == pytest.approx(400.0)
    parts = p["parts_s"]
    # the epoch's training seconds split by the step's phase shares (1:3:5:1), 4 epochs x 10
    assert parts["forward"] == pytest.approx(400.0 * 0.3 * 4 * 10)
    assert parts["backward"] == pytest.approx(400.0 * 0.5 * 4 * 10)
    # val scored after every epoch, test once per run; val at full size: 40 s
    assert parts["evaluation"] == pytest.approx(40.0 * 5 * 10)
    # rest 3 -> 9 s: 120 s at full size, less the test scoring (40 s), once per epoch
    assert parts["checkpoints etc."] == pytest.approx((120.0 - 40.0) * 4 * 10)
    assert p["table_s"] == pytest.approx(sum(parts.values()))
    assert p["scaling"] == pytest.approx(3.0) and p["rows_ratio"] == pytest.approx(3.0)
    # the bound: 3 MFLOP per training row for 4 epochs, 1 MFLOP per scored row (400 val rows
    # at full size, 4 epochs + test), 10 seeds, at 50 GFLOP/s
    flop = 3e6 * 4000 * 4 + 1e6 * 400 * 5
    assert p["bound_s"] == pytest.approx(flop * 10 / 50e9)
    # measured while the process got half the CPU (25 GFLOP/s): projected for 50, half the time
    slow = whole_table.project(
        "m", _measured(100, 20.0, 2.0, 6.0, 25.0), _measured(300, 60.0, 6.0, 18.0, 25.0),
        full=4000, epochs=4, seeds=10, gflops=50.0,
    )  # fmt: skip
    assert slow["table_s"] == pytest.approx(p["table_s"])
    assert slow["scaling"] == pytest.approx(3.0)


@pytest.mark.slow
def test_whole_table_runs_on_tiny_data(whole_table, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code = whole_table.main(
            [
                "--sizes", "2000,4000", "--models", "SharedBottom,HierRec", "--threads", "1",
                "--steps", "1", "--warmup", "0", "--root", str(tmp_path / "w"),
                "--json", str(tmp_path / "w.json"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert "SharedBottom" in out and "HierRec" in out and "goal 4 h on 2 cores" in out
    assert "largest cost:" in out
    bound = next(line for line in out.splitlines() if line.strip().startswith("bound"))
    assert "fp32 matmul peak" in bound
