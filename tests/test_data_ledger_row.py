"""The mixer's typed ledger row: the same columns as the Parquet schema, one construction path, and a
round trip through the work directory's scratch state (a resumed mix rebuilds the same rows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from glasslm.data.executors import load_state, save_state
from glasslm.data.ledger import SCHEMA, LedgerRow


def test_row_fields_are_the_schema_columns_in_order() -> None:
    row = LedgerRow.of("a.jsonl", 3, "d1", "web", 10)
    assert [f.name for f in dataclasses.fields(LedgerRow)] == SCHEMA.names == list(row.columns())
    assert (row.decision, row.rules, row.copies, row.split) == (None, [], 0, None)


def test_fire_keeps_the_first_rule_and_every_value_as_json() -> None:
    row = LedgerRow.of("a.jsonl", 1, "d1", "web", 10)
    row.fire("short", 3)
    row.fire("pii", {"spans": 2})
    assert row.first_rule == "short"
    assert row.rules == [{"rule": "short", "value": "3"}, {"rule": "pii", "value": '{"spans": 2}'}]


def test_row_survives_scratch_state(tmp_path: Path) -> None:
    row = LedgerRow.of("a.jsonl", 7, None, None, 5)
    row.decision = "quarantined"
    row.fire("quarantine", "malformed JSON")
    save_state(tmp_path / "s.state.npz", {"rows": [row.columns()]})
    state = load_state(tmp_path / "s.state.npz")
    assert state is not None and [LedgerRow(**r) for r in state["rows"]] == [row]
