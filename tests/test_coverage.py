"""What a run planned against what it recorded (lmbench.analyze.coverage): the planned repeats with no record."""

import json

from test_report import hand_record

from lmbench.analyze import coverage, results


def written_under(key, record):
    """The record as an older lmbench wrote it: under a key its config no longer has (profile hashed in)."""
    return {**record, "config_key": key}


def test_a_repeat_written_under_an_older_key_counts_as_recorded(tmp_path):
    """run.json's planned list keeps the keys as written; the reader keys each record by its config under this
    lmbench. An old profiled run re-keyed on read listed every measured repeat again as `not recorded` (a
    reviewer's finding, /tmp/review91/edge/rekey): a planned key matches a record's written one too."""
    run = tmp_path / "run"
    run.mkdir()
    record = hand_record("fp32", 8, 1000.0)
    now = record["config_key"]
    results.append(run, written_under("old-key-with-profile", record))
    planned = [coverage.planned_entry("old-key-with-profile", record["config"])]
    (run / "run.json").write_text(json.dumps({"command": "run", "repeats": 2, "planned": planned}))
    records = results.read(run).records
    assert [(r["config_key"], r.get("written_key")) for r in records] == [(now, "old-key-with-profile")]
    rows, warnings = coverage.unrecorded(run, records)
    # Repeat 0 is recorded; repeat 1 is not, and its row takes the key the report shows repeat 0 under (one row
    # of the tables, `ok/not recorded (1/2 ok)`, not a second configuration).
    assert [(row["config_key"], row["repeat"], row["status"]) for row in rows] == [(now, 1, coverage.NOT_RECORDED)]
    assert warnings == []
    assert rows[0]["config"] == records[0]["config"]
