"""`glasslm data import`: every format end to end, every malformed-input case, totals, lineage."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glasslm.cli import main
from glasslm.data.documents import iter_documents, list_shards
from glasslm.data.importers import changed_sources

PROSE = (
    "The quick brown fox jumps over the lazy dog while the patient river carries leaves toward "
    "the distant sea, and every evening the village gathers to share bread and stories. "
)


def page(title: str, body: str) -> bytes:
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> | "
        f"<a href='/about'>About</a></nav><main><article><h1>{title}</h1><p>{body}</p></article></main>"
        "<footer>Copyright footer text</footer></body></html>"
    ).encode()


def write_warc(path: Path, records: list[tuple[str, str, bytes, int]], gz: bool = True) -> None:
    """(url, content type, payload, HTTP status) responses, plus a warcinfo and a request record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gz)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "test"}))
        for url, ctype, payload, status in records:
            req = w.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
            w.write_record(req)
            headers = StatusAndHeaders(f"{status} X", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers)
            )


def docs_of(out: Path) -> list[dict[str, Any]]:
    return [d for shard in list_shards(out / "documents") for _, d in iter_documents(shard)]


def quarantine_of(out: Path) -> list[dict[str, Any]]:
    path = out / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def run_import(*args: str) -> int:
    return main(["data", "import", *args])


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """One small input per format, each with good records (prose, enough for the Gopher rules)."""
    root = tmp_path / "in"
    jdir = root / "jsonl"
    jdir.mkdir(parents=True)
    (jdir / "a.jsonl").write_text(
        "".join(
            json.dumps({"id": f"j{i}", "text": f"Doc {i}. " + PROSE * 3, "source": "mine"}) + "\n"
            for i in range(6)
        )
    )
    with gzip.open(jdir / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": f"Gzipped {i}. " + PROSE * 3}) + "\n" for i in range(4)))
    parquet = root / "table.parquet"
    pq.write_table(
        pa.table(
            {
                "content": [f"Row {i}. " + PROSE * 3 for i in range(5)],
                "uid": [100 + i for i in range(5)],
                "lang": ["en"] * 5,
            }
        ),
        parquet,
        row_group_size=2,
    )
    tree = root / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "LICENSE").write_text(
        "MIT License\n\nPermission is hereby granted, free of charge, to any person...\n"
    )
    (tree / "README.md").write_text("# Title\n\n" + PROSE * 3)
    (tree / "pkg" / "mod.py").write_text('# SPDX-License-Identifier: Apache-2.0\n"""' + PROSE + '"""\n')
    (tree / "pkg" / "notes.txt").write_text(PROSE * 2)
    (tree / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    warc = root / "crawl.warc.gz"
    write_warc(
        warc,
        [
            (
                f"http://example.org/{i}",
                "text/html; charset=utf-8",
                page(f"Page {i}", f"{i} " + PROSE * 3),
                200,
            )
            for i in range(4)
        ]
        + [
            ("http://example.org/logo.png", "image/png", b"\x89PNG...", 200),
            ("http://example.org/missing", "text/html", page("Not found", "gone"), 404),
            ("http://example.org/empty", "text/html", b"<html><body><nav>menu</nav></body></html>", 200),
        ],
    )
    return {"jsonl": jdir, "parquet": parquet, "tree": tree, "warc": warc}


def test_each_format_imports_with_metadata_totals_and_lineage(inputs, tmp_path):
    out = tmp_path / "corpus"
    assert (
        run_import(
            f"web={inputs['warc']}",
            f"tables={inputs['parquet']}",
            f"mine={inputs['jsonl']}",
            "--text-column",
            "content",
            "--id-column",
            "uid",
            "--out",
            str(out),
            "--json",
        )
        == 0
    )
    assert (
        run_import(
            str(inputs["tree"]),
            "--source",
            "code",
            "--format",
            "text",
            "--extend",
            str(out),
            "--out",
            str(tmp_path / "all"),
        )
        == 0
    )
    out = tmp_path / "all"
    m = manifest(out)
    docs = {d["id"]: d for d in docs_of(out)}
    by_source: dict[str, list[dict[str, Any]]] = {}
    for d in docs.values():
        by_source.setdefault(d["source"], []).append(d)
    assert {k: len(v) for k, v in by_source.items()} == {"web": 4, "tables": 5, "mine": 10, "code": 4}
    assert set(m["metrics"]["domains"]) == {"web", "tables", "mine", "code"}
    # Given ids are kept (integers as strings); missing ones are content-derived and stable.
    assert {"j0", "100", "104"} <= set(docs)
    assert docs["100"]["metadata"] == {"lang": "en"}
    # WARC: URL, date, record id and content type; the record id is the document id.
    web = by_source["web"][0]
    assert web["id"] == web["metadata"]["warc_record_id"] and web["metadata"]["url"].startswith(
        "http://example.org/"
    )
    assert (
        web["metadata"]["content_type"].startswith("text/html")
        and web["created"] == web["metadata"]["warc_date"]
    )
    assert "Home" not in web["text"] and "footer" not in web["text"] and PROSE.strip() in web["text"]
    # Text tree: one document per file, relative path, licence from the SPDX header or the nearest file.
    files = {d["metadata"]["path"]: d["metadata"] for d in by_source["code"]}
    assert set(files) == {"LICENSE", "README.md", "pkg/mod.py", "pkg/notes.txt", "image.png"} - {"image.png"}
    assert (
        files["pkg/mod.py"]["license"] == "Apache-2.0"
        and files["pkg/mod.py"]["license_from"] == "SPDX header"
    )
    assert files["pkg/notes.txt"]["license"] == "MIT" and files["pkg/notes.txt"]["license_from"] == "LICENSE"
    # Quarantine: the non-HTML, the 404, the page with no text, the binary file; nothing else.
    reasons = sorted(q["reason"].split(":")[0] for q in quarantine_of(out))
    assert reasons == ["HTML yields no text", "HTTP status", "binary file (NUL bytes)", "not HTML"]
    metrics = m["metrics"]
    assert metrics["records"] == metrics["imported"] + metrics["quarantined"] == 23 + 4
    # Lineage: every file read, with size, mtime and the sha256 of its bytes.
    uris = {s["uri"]: s for s in m["sources"]}
    assert str(inputs["parquet"]) in uris and str(inputs["warc"]) in uris
    import hashlib

    assert uris[str(inputs["warc"])]["sha256"] == hashlib.sha256(inputs["warc"].read_bytes()).hexdigest()
    assert (
        uris[str(inputs["warc"])]["bytes"] == inputs["warc"].stat().st_size
        and uris[str(inputs["warc"])]["mtime"]
    )
    assert not any(".git" in u for u in uris)
    assert changed_sources(m) == []
    (inputs["jsonl"] / "a.jsonl").write_text('{"id": "x", "text": "changed"}\n')
    changed = changed_sources(m)
    assert len(changed) == 1 and "a.jsonl: changed" in changed[0]
    inputs["parquet"].unlink()
    assert any("table.parquet: missing" in c for c in changed_sources(m))


def test_hf_save_to_disk_folder_and_arrow(tmp_path):
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC streams listed in state.json."""
    folder = tmp_path / "ds"
    folder.mkdir()
    table = pa.table({"text": [PROSE + str(i) for i in range(3)], "label": [0, 1, 0]})
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    (folder / "dataset_info.json").write_text("{}")
    out = tmp_path / "out"
    assert run_import(str(folder), "--source", "hf", "--out", str(out)) == 0
    docs = docs_of(out)
    assert [d["metadata"]["label"] for d in docs] == [0, 1, 0] and all(d["source"] == "hf" for d in docs)
    assert manifest(out)["metrics"]["imported"] == 3


def test_malformed_jsonl_every_case_quarantined_with_file_line_reason(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    lines = [
        json.dumps({"id": "ok1", "text": "fine"}).encode(),
        b"{not json",
        b'{"id": "u", "text": "caf\xc3"}',  # invalid UTF-8
        json.dumps({"id": "m"}).encode(),  # missing text
        json.dumps({"id": "e", "text": "   "}).encode(),  # empty text
        json.dumps({"id": "n", "text": None}).encode(),  # null text
        json.dumps({"id": "t", "text": 5}).encode(),  # non-string text
        json.dumps({"id": 7, "text": "wrong id type"}).encode(),
        json.dumps({"id": "s", "text": "lone \ud800 surrogate"}).encode(),
        json.dumps(["a", "list"]).encode(),
        json.dumps({"id": "meta", "text": "x", "metadata": "not an object"}).encode(),
        json.dumps({"id": "ok1", "text": "duplicate id"}).encode(),
        json.dumps({"text": "no id at all"}).encode(),
        b"",
    ]
    (src / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    good = gzip.compress(
        b"".join(
            json.dumps({"id": f"g{i}", "text": f"gz {i} " + PROSE * 20}).encode() + b"\n" for i in range(200)
        ),
        mtime=0,
    )
    (src / "b.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    out = tmp_path / "out"
    assert run_import(str(src), "--source", "s", "--out", str(out)) == 0
    q = quarantine_of(out)
    got = {(Path(e["file"]).name, e["line"]): e["reason"] for e in q}
    expect = {
        2: "malformed JSON",
        3: "invalid UTF-8",
        4: "missing field: 'text'",
        5: "empty field: 'text'",
        6: "null field: 'text'",
        7: "non-string field: 'text'",
        8: "non-string field: 'id'",
        9: "invalid UTF-8 in 'text'",
        10: "not a JSON object",
        11: "non-object field: 'metadata'",
        14: "empty line",
    }
    for line, reason in expect.items():
        assert got[("a.jsonl", line)].startswith(reason), (line, got.get(("a.jsonl", line)))
    truncated = [r for (name, _), r in got.items() if name == "b.jsonl.gz"]
    assert len(truncated) == 1 and truncated[0].startswith("truncated or corrupt compressed stream")
    # Every complete line before the cut is imported (ISA-L alone stopped short of ~a fifth of them).
    complete = zlib.decompressobj(31).decompress(good[: len(good) // 2]).count(b"\n")
    assert complete > 50 and ("b.jsonl.gz", complete + 1) in got
    assert sum(d["id"].startswith("g") for d in docs_of(out)) == complete
    assert "truncated or corrupt compressed stream" in manifest(out)["metrics"]["quarantined_by_reason"]
    m = manifest(out)["metrics"]
    assert m["records"] == m["imported"] + m["quarantined"]
    assert m["quarantined"] == len(expect) + 1
    assert m["duplicate_ids"]["count"] == 1 and "ok1" in m["duplicate_ids"]["examples"]
    ids = {d["id"] for d in docs_of(out)}
    assert "ok1" in ids and any(len(i) == 24 for i in ids)  # the id-less record got a derived id


def test_malformed_parquet_warc_and_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(
        pa.table({"text": ["good " + PROSE, None, "", "also good"], "id": ["a", "b", "c", "d"]}),
        src / "t.parquet",
        row_group_size=2,
    )
    (src / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    pq.write_table(pa.table({"body": ["x"]}), src / "nocol.parquet")
    out = tmp_path / "pq"
    assert run_import(str(src), "--source", "p", "--out", str(out)) == 0
    reasons = [(Path(q["file"]).name, q["line"], q["reason"].split(":")[0]) for q in quarantine_of(out)]
    assert ("t.parquet", 1, "null field") in reasons and ("t.parquet", 2, "empty field") in reasons
    assert ("broken.parquet", 0, "unreadable Parquet file") in reasons
    assert ("nocol.parquet", 0, "missing column") in reasons
    m = manifest(out)["metrics"]
    assert (m["records"], m["imported"], m["quarantined"]) == (6, 2, 4)

    warc = tmp_path / "w.warc.gz"
    write_warc(warc, [(f"http://e.org/{i}", "text/html", page(str(i), PROSE * 10), 200) for i in range(6)])
    data = warc.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) - 300])
    out = tmp_path / "warc"
    assert run_import(str(cut), "--source", "w", "--out", str(out)) == 0
    q = quarantine_of(out)
    assert len(q) == 1 and ("truncated" in q[0]["reason"])
    m = manifest(out)["metrics"]
    assert m["imported"] == 5 and m["records"] == m["imported"] + m["quarantined"]


def test_link_references_jsonl_in_place(inputs, tmp_path):
    out = tmp_path / "linked"
    assert run_import(str(inputs["jsonl"] / "a.jsonl"), "--link", "--out", str(out)) == 0
    links = list((out / "documents").iterdir())
    # A hard link: a regular file of the artifact (hashed, verified, read by every stage), no copy.
    assert len(links) == 1 and not links[0].is_symlink()
    assert links[0].stat().st_ino == (inputs["jsonl"] / "a.jsonl").stat().st_ino
    m = manifest(out)
    assert m["sources"][0]["linked"] and m["sources"][0]["sha256"]
    assert len(docs_of(out)) == 6 and m["metrics"]["imported"] == 6
    assert sum(d["shards"] for d in m["metrics"]["domains"].values()) == 1
    assert main(["manifest", "verify", str(out)]) == 0
    assert main(["data", "tag", str(out), "--taggers", "stats", "--out", str(tmp_path / "tags")]) == 0
    # Appending to the source changes the artifact's file too: verify says so.
    with open(inputs["jsonl"] / "a.jsonl", "a") as f:
        f.write('{"id": "late", "text": "appended after the import"}\n')
    assert main(["manifest", "verify", str(out)]) == 1
    # A linked file cannot be given ids: an id-less record is quarantined, not silently changed.
    out2 = tmp_path / "linked2"
    # every record of it is id-less: the artifact is written (its quarantine), the command fails
    assert run_import(str(inputs["jsonl"] / "b.jsonl.gz"), "--link", "--source", "x", "--out", str(out2)) == 1
    assert manifest(out2)["metrics"]["quarantined"] == 4


def test_link_across_filesystems_is_refused_before_reading(inputs, tmp_path, capsys):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp_path")
    out = shm / f"glasslm-link-{tmp_path.name}"
    assert run_import(str(inputs["jsonl"] / "a.jsonl"), "--link", "--out", str(out)) == 2
    assert "--link makes hard links" in capsys.readouterr().err and not out.exists()


def test_text_tree_of_gzip_and_man_pages(tmp_path):
    tree = tmp_path / "share"
    (tree / "man1").mkdir(parents=True)
    (tree / "man1" / "frob.1.gz").write_bytes(gzip.compress(b".TH FROB 1\n.SH NAME\nfrob \\- frobnicate\n"))
    (tree / "man1" / "alias.1.gz").write_bytes(gzip.compress(b".so man1/frob.1\n"))
    (tree / "changelog.gz").write_bytes(gzip.compress(b"frob (1.0) unstable\n  * Initial release.\n"))
    out = tmp_path / "out"
    assert run_import(f"host-docs={tree}", "--format", "text", "--out", str(out)) == 0
    docs = {d["metadata"]["path"]: d for d in docs_of(out)}
    assert docs["man1/frob.1.gz"]["text"].startswith("NAME\nfrob - frobnicate")
    assert "Initial release." in docs["changelog.gz"]["text"]
    assert [q["reason"] for q in quarantine_of(out)] == ["man page redirect (.so)"]


def test_errors_name_what_to_do(tmp_path, capsys):
    assert run_import(str(tmp_path / "nope"), "--out", str(tmp_path / "o")) != 0
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"1")
    assert run_import(str(tmp_path / "d"), "--format", "jsonl", "--out", str(tmp_path / "o")) != 0
    assert "no jsonl files found" in capsys.readouterr().err


def test_page_licence_from_meta_or_rel_license_link() -> None:
    from glasslm.data.importers.warc import page_license

    assert (
        page_license(b'<html><head><meta name="license" content="Apache-2.0 OR MIT"></head>')
        == "Apache-2.0 OR MIT"
    )
    cc = b'<head><link rel="license" href="https://creativecommons.org/licenses/by-sa/4.0/"></head>'
    assert page_license(cc) == "CC-BY-SA-4.0"
    assert (
        page_license(b'<link rel="license" href="https://example.org/terms">') == "https://example.org/terms"
    )
    assert page_license(b"<html><body>no licence here</body></html>") is None
