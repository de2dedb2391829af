"""Parquet shards, Arrow files and Hugging Face ``datasets`` folders (``save_to_disk``).

One record per row: ``text_column`` is the text, ``id_column`` the id (integers become strings; a
missing or null id becomes a content-derived one), every other column goes into ``metadata`` under
its own name. Parquet is read one row group at a time in batches, so memory follows the row group,
not the file; a row group that cannot be read quarantines each of its rows (the footer knows how
many), so totals still add up. A ``save_to_disk`` folder holds Arrow IPC *stream* files listed in
``state.json`` (``dataset_dict.json`` + one folder per split for a DatasetDict; the split is kept in
``metadata.split``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from glasslm.data.importers.records import Item, ReadOptions, bad, check_text, content_id
from glasslm.data.importers.sources import SourceFile

_BATCH_ROWS = 4096


def jsonable(value: Any) -> Any:
    """A column value as JSON (metadata must survive a round trip through Dolma JSONL)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal | _dt.timedelta):
        return str(value)
    return str(value)


def _raw(row: dict[str, Any]) -> bytes:
    return json.dumps(jsonable(row), ensure_ascii=False, default=str).encode("utf-8", "replace")


def batch_items(batch: pa.RecordBatch, first_row: int, options: ReadOptions) -> Iterator[Item]:
    names = batch.schema.names
    text_col, id_col = options.text_column, options.id_column
    if text_col not in names:
        missing = f"missing column: '{text_col}' (columns: {', '.join(names)}; see --text-column)"
        for i, row in enumerate(batch.to_pylist()):
            yield bad(first_row + i, missing, _raw(row))
        return
    texts = batch.column(text_col).to_pylist()
    ids = batch.column(id_col).to_pylist() if id_col in names else [None] * len(texts)
    others = [(n, batch.column(n).to_pylist()) for n in names if n not in (text_col, id_col)]
    extra = options.extra
    for i, (text, given) in enumerate(zip(texts, ids, strict=True)):
        reason = check_text(text)
        if reason is None and given is not None and not isinstance(given, str | int):
            reason = f"non-string field: 'id' is {type(given).__name__}"
        if reason is None and given == "":
            reason = "empty field: 'id'"
        metadata = {name: jsonable(values[i]) for name, values in others}
        if reason is not None:
            yield bad(first_row + i, reason, _raw({text_col: text, id_col: given, **metadata}))
            continue
        doc_id = content_id(text) if given is None else str(given)
        yield Item(
            first_row + i,
            {
                "id": doc_id,
                "text": text,
                "added": options.date,
                "created": options.date,
                "metadata": {**metadata, **extra} if extra else metadata,
            },
            None,
            b"",
        )


def read_parquet(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    with src.open_random() as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError, ValueError) as e:
            yield bad(0, f"unreadable Parquet file: {e}")
            return
        row = 0
        for group in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            done = 0
            try:
                # One thread: the import is measured per core, and workers parallelise across files.
                for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], use_threads=False):
                    yield from batch_items(batch, row + done, options)
                    done += batch.num_rows
            except (pa.ArrowException, OSError, ValueError) as e:
                for index in range(row + done, row + rows):
                    yield bad(index, f"unreadable Parquet row group: group {group}, {e}")
            row += rows


def read_arrow(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    """An Arrow IPC file or stream (``save_to_disk`` writes streams)."""
    with src.open_random() as f:
        try:
            reader: Any = pa.ipc.open_stream(f)
        except pa.ArrowInvalid:
            f.seek(0)
            try:
                reader = pa.ipc.open_file(f)
            except (pa.ArrowException, OSError) as e:
                yield bad(0, f"unreadable Arrow file: {e}")
                return
        except (pa.ArrowException, OSError) as e:
            yield bad(0, f"unreadable Arrow file: {e}")
            return
        batches = (
            (reader.get_batch(i) for i in range(reader.num_record_batches))
            if isinstance(reader, pa.ipc.RecordBatchFileReader)
            else iter(reader)
        )
        row = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as e:
                yield bad(row, f"unreadable Arrow record batch: after row {row}, {e}")
                return
            for start in range(0, batch.num_rows, _BATCH_ROWS):
                yield from batch_items(batch.slice(start, _BATCH_ROWS), row + start, options)
            row += batch.num_rows


def hf_data_files(fs: Any, root: str) -> list[tuple[str, str | None]]:
    """(arrow file path, split) of a ``save_to_disk`` folder, in the dataset's own order."""

    def state_files(folder: str) -> list[str]:
        with fs.open(f"{folder}/state.json", "rb") as f:
            state = json.load(f)
        return [f"{folder}/{entry['filename']}" for entry in state.get("_data_files", [])]

    if fs.exists(f"{root}/dataset_dict.json"):
        with fs.open(f"{root}/dataset_dict.json", "rb") as f:
            splits = json.load(f).get("splits", [])
        return [(p, split) for split in splits for p in state_files(f"{root}/{split}")]
    return [(p, None) for p in state_files(root)]


def is_hf_folder(fs: Any, root: str) -> bool:
    return bool(fs.exists(f"{root}/state.json") or fs.exists(f"{root}/dataset_dict.json"))
