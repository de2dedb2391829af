"""The default corpus: stdlib code and docs, the web crawl of pinned-package pages, reproducibility across hosts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from glasslm.cli import main
from glasslm.data.documents import iter_documents, list_shards
from glasslm.data.roff import roff_to_text


@pytest.fixture
def stdlib(tmp_path: Path) -> Path:
    stdlib = tmp_path / "stdlib"
    (stdlib / "pkg").mkdir(parents=True)
    (stdlib / "alpha.py").write_text(
        '"""Alpha module."""\n\n\nclass A:\n    """An A."""\n\n    def f(self):\n        """Do f."""\n'
    )
    (stdlib / "pkg" / "__init__.py").write_text("x = 1\n")
    (stdlib / "test").mkdir()
    (stdlib / "test" / "bad.py").write_text("this is a deliberately broken fixture (\n")
    (stdlib / "site-packages").mkdir()
    (stdlib / "site-packages" / "other.py").write_text('"""Not stdlib."""\n')
    return stdlib


def _docs(out: Path) -> dict[str, dict]:
    return {
        d["metadata"].get("origin") or d["metadata"]["url"]: d
        for shard in list_shards(out / "documents")
        for _, d in iter_documents(shard)
    }


def test_corpus_code_and_docs_sources_ids_licences(stdlib, tmp_path):
    out = tmp_path / "corpus"
    assert (
        main(
            [
                "data",
                "corpus",
                "--out",
                str(out),
                f"--corpus.stdlib_dir={stdlib}",
                "--corpus.sources=[code, docs]",
            ]
        )
        == 0
    )
    docs = _docs(out)
    assert {o for o in docs if not o.startswith("pydoc_data.topics/")} == {
        "stdlib/alpha.py",
        "stdlib/pkg/__init__.py",
        "stdlib-docstrings/alpha.py",
    }
    for origin, d in docs.items():
        assert d["id"] == hashlib.sha256(origin.encode()).hexdigest()[:24]
        assert d["added"] == d["created"] == "2026-01-01T00:00:00Z"
        assert "path" not in d["metadata"]  # no absolute path: it differs between installations
    assert docs["stdlib/alpha.py"]["source"] == "code"
    assert docs["stdlib/alpha.py"]["metadata"]["license"] == "PSF-2.0"
    assert docs["stdlib-docstrings/alpha.py"]["text"] == "Alpha module.\n\nA\nAn A.\n\nA.f\nDo f."
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "documents" and manifest["metrics"]["docs"] == len(docs)
    assert manifest["metrics"]["versions"]["python"].startswith("CPython")


def test_host_directories_are_no_longer_config_keys(tmp_path, capsys):
    assert main(["data", "corpus", "--out", str(tmp_path / "x"), "--corpus.doc_dirs=[/usr/share/doc]"]) == 2
    assert "doc_dirs" in capsys.readouterr().err


def test_web_domain_is_a_crawl_of_pinned_package_pages_through_warc_extraction(tmp_path):
    out = tmp_path / "corpus"
    assert (
        main(["data", "corpus", "--out", str(out), "--corpus.sources=[web]", "--corpus.max_bytes_web=60000"])
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    web = manifest["metrics"]["sources"]["web"]
    assert web["docs"] > 3 and web["records"] == web["docs"] + web["quarantined"]
    assert web["pages"]["license"] == web["quarantined"]  # licence files are text/plain: quarantined, counted
    assert "numpy" in web["distributions"] and "glasslm" not in web["distributions"]
    assert "warc/web.warc.gz" in manifest["files"]
    docs = list(_docs(out).values())
    assert all(
        d["source"] == "web" and d["metadata"]["url"].startswith("https://docs.glasslm.invalid/")
        for d in docs
    )
    assert not any(
        "Sign in" in d["text"] or "Privacy" in d["text"] for d in docs
    )  # boilerplate extracted away
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {q["file"] for q in quarantine} == {"warc/web.warc.gz"}  # relative: the same bytes anywhere
    # each web document's origin is its record in the crawl, wherever the corpus now is
    from glasslm.data.origins import origin_of

    moved = tmp_path / "moved"
    out.rename(moved)
    origin = origin_of(moved, "web-0000.jsonl.gz", 1)
    assert origin is not None and origin.startswith(f"{moved / 'warc/web.warc.gz'} (record ")


_BLOCK_HOST = """
import sys
BLOCKED = ("/usr/share/doc", "/usr/share/man", "/usr/share/common-licenses", "/usr/share/info")
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str) \
            and args[0].startswith(BLOCKED):
        raise PermissionError(f"host directory read: {args[0]}")
sys.addaudithook(hook)
from glasslm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_default_corpus_is_the_same_with_another_home_and_host_docs_unreadable(tmp_path):
    import os
    import subprocess
    import sys

    args = [
        "data",
        "corpus",
        "--corpus.max_bytes_code=40000",
        "--corpus.max_bytes_docs=40000",
        "--corpus.max_bytes_web=40000",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_HOST, *args, "--out", str(tmp_path / "b")],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    files = [json.loads((tmp_path / x / "manifest.json").read_text())["files"] for x in "ab"]
    assert files[0] == files[1] and any(k.startswith("documents/web-") for k in files[0])


def test_corpus_from_the_real_stdlib_small(tmp_path):
    out = tmp_path / "corpus"
    assert (
        main(
            [
                "data",
                "corpus",
                "--out",
                str(out),
                "--corpus.sources=[code, docs]",
                "--corpus.max_bytes_code=150000",
                "--corpus.max_bytes_docs=100000",
                "--json",
            ]
        )
        == 0
    )
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
    source = '.TH X 1\n.SH "SEE ALSO"\n.BR ls (1),\n\\(:Uber \\[u00E9]t\\(\'e \\-\\-help\\ now\n.de XX\nignored\n..\n'
    text = roff_to_text(source)
    assert text == "SEE ALSO\nls(1),\n\u00dcber \u00e9t\u00e9 --help now\n"
