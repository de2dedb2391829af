"""The embedded corpus: sources, ids, licences, man-page text, caps, notes, byte-identical rebuilds."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from glasslm.cli import main
from glasslm.data.documents import iter_documents, list_shards
from glasslm.data.roff import roff_to_text

MAN_PAGE = r""".\" a comment
.TH FROB 1 "2024" "frob 1.0"
.SH NAME
frob \- frobnicate \fBfiles\fR
.SH SYNOPSIS
.B frob
.RI [ options ] " file"
.SH DESCRIPTION
\fBfrob\fP turns files into \(lqfrobs\(rq \(em quickly.
.PP
Report bugs to frob@example.org.
"""


def _gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    stdlib = tmp_path / "stdlib"
    (stdlib / "pkg").mkdir(parents=True)
    (stdlib / "alpha.py").write_text('"""Alpha module."""\n\n\nclass A:\n    """An A."""\n\n    def f(self):\n        """Do f."""\n')
    (stdlib / "pkg" / "__init__.py").write_text("x = 1\n")
    (stdlib / "test").mkdir()
    (stdlib / "test" / "bad.py").write_text("this is a deliberately broken fixture (\n")
    (stdlib / "site-packages").mkdir()
    (stdlib / "site-packages" / "other.py").write_text('"""Not stdlib."""\n')
    doc = tmp_path / "doc"
    (doc / "frob").mkdir(parents=True)
    (doc / "frob" / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2024 Jane <jane@example.org>\nLicense: GPL-2+\n\n"
        "Files: debian/*\nLicense: MIT\n"
    )
    _gz(doc / "frob" / "changelog.Debian.gz", "frob (1.0-1) unstable; urgency=low\n\n  * Initial release.\n")
    (doc / "frob" / "image.png").write_bytes(b"\x89PNG")  # not a text document kind: ignored
    licenses = tmp_path / "common-licenses"
    licenses.mkdir()
    (licenses / "MIT").write_text("Permission is hereby granted, free of charge, ...\n")
    man = tmp_path / "man"
    _gz(man / "man1" / "frob.1.gz", MAN_PAGE)
    _gz(man / "de" / "man1" / "frob.1.gz", MAN_PAGE.replace("turns files into", "macht aus Dateien"))
    _gz(man / "man1" / "frobnicate.1.gz", ".so man1/frob.1\n")
    return {"stdlib": stdlib, "doc": doc, "licenses": licenses, "man": man, "missing": tmp_path / "nope"}


def _args(roots: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["data", "corpus", "--out", str(out), f"--corpus.stdlib_dir={roots['stdlib']}",
            f"--corpus.doc_dirs=[{roots['doc']}, {roots['licenses']}, {roots['missing']}]",
            f"--corpus.man_dir={roots['man']}", *extra]


def _docs(out: Path) -> dict[str, dict]:
    return {d["metadata"]["origin"]: d for shard in list_shards(out / "documents") for _, d in iter_documents(shard)}


def test_corpus_sources_ids_licences_and_notes(roots, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(_args(roots, out)) == 0
    printed = capsys.readouterr().out
    assert "web" in printed and "not found" in printed  # the missing directory is a note, not an error
    docs = _docs(out)
    assert set(docs) == {
        "stdlib/alpha.py", "stdlib/pkg/__init__.py", "stdlib-docstrings/alpha.py",
        str(roots["doc"] / "frob" / "copyright"), str(roots["doc"] / "frob" / "changelog.Debian.gz"),
        str(roots["licenses"] / "MIT"), str(roots["man"] / "man1" / "frob.1.gz"),
        str(roots["man"] / "de" / "man1" / "frob.1.gz"),
    } | {o for o in docs if o.startswith("pydoc_data.topics/")}
    assert any(o.startswith("pydoc_data.topics/") for o in docs)
    for origin, d in docs.items():
        assert d["id"] == hashlib.sha256(origin.encode()).hexdigest()[:24]
        assert d["added"] == d["created"] == "2026-01-01T00:00:00Z"
    assert docs["stdlib/alpha.py"]["source"] == "code"
    assert docs["stdlib/alpha.py"]["metadata"]["license"] == "PSF-2.0"
    assert docs["stdlib-docstrings/alpha.py"]["text"] == "Alpha module.\n\nA\nAn A.\n\nA.f\nDo f."
    assert docs["stdlib-docstrings/alpha.py"]["source"] == "docs"
    changelog = docs[str(roots["doc"] / "frob" / "changelog.Debian.gz")]
    assert changelog["source"] == "web" and "Initial release." in changelog["text"]
    assert changelog["metadata"]["license"] == "GPL-2+, MIT" and changelog["metadata"]["package"] == "frob"
    assert docs[str(roots["licenses"] / "MIT")]["metadata"]["license"] == "MIT"
    man = docs[str(roots["man"] / "man1" / "frob.1.gz")]
    assert man["text"].startswith("NAME\nfrob - frobnicate files\n")
    assert "frob turns files into \u201cfrobs\u201d \u2014 quickly." in man["text"]
    assert ".SH" not in man["text"] and "\\f" not in man["text"]
    assert docs[str(roots["man"] / "de" / "man1" / "frob.1.gz")]["metadata"]["man_lang"] == "de"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "documents"
    web = manifest["metrics"]["sources"]["web"]
    assert web["docs"] == 5 and web["skipped"] == {"man page redirect (.so)": 1}
    assert web["bytes"] == sum(len(d["text"].encode()) for d in docs.values() if d["source"] == "web")
    assert manifest["metrics"]["docs"] == len(docs)
    assert any("nope" in n for n in manifest["metrics"]["notes"])


def test_corpus_is_byte_identical_and_capped(roots, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(roots, a, "--corpus.sources=[web]")) == 0
    assert main(_args(roots, b, "--corpus.sources=[web]")) == 0
    files = sorted(p.name for p in (a / "documents").iterdir())
    assert files == ["web-0000.jsonl.gz"]
    assert (a / "documents" / files[0]).read_bytes() == (b / "documents" / files[0]).read_bytes()

    capped = tmp_path / "capped"
    assert main(_args(roots, capped, "--corpus.sources=[web]", "--corpus.max_bytes_web=600",
                      "--corpus.min_room=0", "--corpus.shard_bytes=1")) == 0
    docs = _docs(capped)
    assert 0 < sum(len(d["text"].encode()) for d in docs.values()) <= 600
    assert len(list((capped / "documents").iterdir())) == len(docs)  # one document per shard


def test_corpus_from_the_real_stdlib_small(tmp_path):
    out = tmp_path / "corpus"
    assert main(["data", "corpus", "--out", str(out), "--corpus.sources=[code, docs]",
                 "--corpus.max_bytes_code=150000", "--corpus.max_bytes_docs=100000", "--json"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    sources = manifest["metrics"]["sources"]
    assert 100_000 < sources["code"]["bytes"] <= 150_000 and sources["code"]["docs"] > 3
    assert 50_000 < sources["docs"]["bytes"] <= 100_000
    for d in _docs(out).values():
        assert d["metadata"]["license"] == "PSF-2.0"
        assert "site-packages" not in d["metadata"]["origin"]


def test_unknown_source_is_a_config_error(tmp_path, capsys):
    assert main(["data", "corpus", "--out", str(tmp_path / "x"), "--corpus.sources=[code, books]"]) == 2
    assert "books" in capsys.readouterr().err


def test_roff_escapes_and_macros():
    source = ".TH X 1\n.SH \"SEE ALSO\"\n.BR ls (1),\n\\(:Uber \\[u00E9]t\\('e \\-\\-help\\ now\n.de XX\nignored\n..\n"
    text = roff_to_text(source)
    assert text == "SEE ALSO\nls(1),\n\u00dcber \u00e9t\u00e9 --help now\n"
