"""The report's time-to-target table (lmbench.analyze.ranking.section) and the cells beside its figures."""

from lmbench.analyze import ranking
from lmbench.plan.config import Config


def evaluated(precision, *, repeat=0, status="reached", time_s=2.0, busy=False):
    config = Config(precision=precision, batch_size=8, data="markov", eval_every=10, target_loss=3.0, device="cuda")
    reached = status == "reached"
    metrics = {"tokens_per_s": 1000.0, "val_loss_initial": 6.0, "target_loss_nats": 3.0, "target_status": status,
               "val_points": [{"step": 10, "tokens": 10240, "val_loss": 2.9 if reached else 3.4, "wall_s": 1.0}],
               "val_loss_best": 2.9 if reached else 3.4, "time_to_target_s": time_s if reached else None,
               "steps_to_target": 10 if reached else None, "tokens_to_target": 10240 if reached else None}
    if busy:  # other processes kept 1.5 of 2 cores busy over the window
        metrics.update(host_other_cpu_cores=1.5, host_usable_cores=2, window_s=10.0)
    return {"schema_version": 1, "suite": "hand", "config_key": config.key, "repeat": repeat,
            "config": config.to_dict(), "status": "ok", "reason": None, "metrics": metrics, "losses": [3.0],
            "step_times_s": [0.1], "env": {}, "warnings": []}


def failed(precision, status="oom"):
    record = evaluated(precision)
    return {**record, "status": status, "reason": "OutOfMemoryError", "metrics": None}


def test_a_configuration_that_never_succeeded_ranks_last_with_its_status():
    """The module says such a configuration ranks after the others; the table dropped it (it evaluated nothing),
    so an out-of-memory precision vanished from the report's first table (a reviewer's finding)."""
    grid = ranking.section([failed("amp-bf16"), evaluated("fp32"), evaluated("bf16", status="not_reached")])["quality"]
    assert [(row[0], row[1], row[2]) for row in grid.rows] == [("1", "fp32", "reached"), ("2", "bf16", "not_reached"),
                                                               ("3", "amp-bf16", "oom")]
    assert grid.rows[2][3:] == ["-"] * (len(grid.headers) - 3)
    # Nothing evaluated: no table, a failure or not.
    assert ranking.section([failed("amp-bf16"), {**evaluated("fp32"), "metrics": {"tokens_per_s": 1.0}}]) == {}
    # A failed row that was never to evaluate (a throughput row, a skipped one) is no time-to-target row (a
    # reviewer found a skipped fp16 batch-64 row ranked second).
    throughput = failed("fp16", status="skipped")
    throughput["config"] = Config(precision="fp16", batch_size=64, device="cuda").to_dict()
    grid = ranking.section([evaluated("fp32"), throughput])["quality"]
    assert len(grid.rows) == 1 and "fp16" not in grid.rows[0]


def test_the_target_cell_counts_the_repeats_the_figures_rest_on():
    """Two quiet repeats reached the target, a contended one did not: the figures beside the cell are the quiet
    two's, and the cell read 'not_reached (2/3 reached)'."""
    records = [evaluated("fp32", repeat=0), evaluated("fp32", repeat=1, time_s=3.0),
               evaluated("fp32", repeat=2, status="not_reached", busy=True)]
    (standing,) = ranking.standings(records)
    assert standing.target_cell() == "reached (2/2)"
    assert standing.median("time_to_target_s", standing.reached()) == 2.5
    # Every repeat contended: they are the figures then, and the cell counts them all.
    busy = [evaluated("fp32", repeat=0, busy=True), evaluated("fp32", repeat=1, status="not_reached", busy=True)]
    assert ranking.standings(busy)[0].target_cell() == "not_reached (1/2 reached)"
