"""Outside text into a documents artifact (``glasslm data import``): Dolma JSONL, Parquet, Arrow and
Hugging Face ``datasets`` folders, text/Markdown/code trees, and WARC crawls.

One reader per format (jsonl.py, arrow.py, text.py, warc.py + html.py) turns files into ``Item``
records (records.py); run.py writes the usable ones as Dolma shards and the rest to quarantine;
sources.py opens paths through fsspec and records each file's size, mtime/ETag and sha256.
"""

from glasslm.data.importers.records import FORMATS, ImportInput
from glasslm.data.importers.run import ImportResult, run_import
from glasslm.data.importers.sources import changed_sources

__all__ = ["FORMATS", "ImportInput", "ImportResult", "changed_sources", "run_import"]
