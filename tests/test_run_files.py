"""One reader of results.jsonl for runs and tables (harness.checkpoints.scan_records), one definition of a record."""

import json

import pytest

from harness.checkpoints import DONE, RESULTS, read_records, scan_records
from harness.errors import UserError
from harness.records import load_records

GOOD = {"step": 10, "args": {"dataset": "SyntheticLinear", "algorithm": "ERM", "test_envs": [0]}}


def write(path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def test_the_reader_names_every_line_that_is_not_a_record(tmp_path):
    path = tmp_path / "run" / RESULTS
    write(path, json.dumps(GOOD) + "\n", '{"step": "20", "args": {}}\n', json.dumps({**GOOD, "step": 20}) + "\n",
          json.dumps({"step": 25}) + "\n", '{"step": 30, "ar')
    found = scan_records(path)
    assert [r["step"] for r in found.records] == [10, 20]
    assert found.bad_lines == [2, 4, 5] and found.torn


def test_a_run_drops_only_a_torn_last_line_and_tables_count_every_bad_line(tmp_path):
    path = tmp_path / "run" / RESULTS
    write(path, json.dumps(GOOD) + "\n", '{"step": 30, "ar')
    assert [r["step"] for r in read_records(path)] == [10]  # the write a kill interrupted
    (path.parent / DONE).write_text("")
    records, stats = load_records(tmp_path)
    assert [r["step"] for r in records] == [10] and stats.corrupt_lines == 1  # a finished run should have none

    write(path, json.dumps(GOOD) + "\n", "not json\n", json.dumps({**GOOD, "step": 20}) + "\n")
    with pytest.raises(UserError, match=r"line 2 is not a record"):
        read_records(path)
    records, stats = load_records(tmp_path)
    assert [r["step"] for r in records] == [10, 20] and stats.corrupt_lines == 1
