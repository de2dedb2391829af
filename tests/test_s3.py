"""Object storage (issue #19): data stages read s3:// through fsspec, against a real S3-compatible
server (moto in server mode) on 127.0.0.1 started here — never the network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("upath")

from glasslm import artifacts  # noqa: E402
from glasslm.cli import main  # noqa: E402
from glasslm.data import dedupe, storage  # noqa: E402
from glasslm.data.documents import iter_documents, read_jsonl, shard_names  # noqa: E402

BUCKET = "glasslm-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        # botocore (s3fs) reads the endpoint and credentials from the environment, as in production
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "GLASSLM_STAGING": str(tmp_path_factory.mktemp("staging")),
        }.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        # moto keeps its buckets in process-wide state, which outlives a server started by another test
        # module (tests/test_ray_cluster.py shares this fixture): start from an empty store
        urllib.request.urlopen(
            urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30
        ).close()
        fs.mkdir(BUCKET)
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _put(fs: object, local: Path, url: str) -> None:
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"{url}{path.name}")  # type: ignore[attr-defined]


def test_import_and_dedupe_read_s3(s3: object, tmp_path: Path) -> None:
    from tests.test_dedupe_scale import corpus  # the same mixed-duplicates corpus as the scale test

    local = corpus(tmp_path / "docs", shards=3, docs=15)
    for shard in (local / "documents").iterdir():  # a clean corpus: quarantine names its file, local or not
        rows = [r for r in read_jsonl(shard) if "text" in r]
        shard.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    _put(s3, local / "documents", f"s3://{BUCKET}/raw/")

    # import: inputs from the store, sources recorded with their URL
    assert main(["data", "import", f"s3://{BUCKET}/raw/", "--out", str(tmp_path / "imported")]) == 0
    imported = [doc for _, path in shard_names(tmp_path / "imported") for _, doc in iter_documents(path)]
    assert sorted(d["text"] for d in imported) == sorted(
        r["text"] for s in sorted((local / "documents").iterdir()) for r in read_jsonl(s)
    )

    # dedupe: the documents read from s3:// give the same bytes as read from disk, partitioned too
    _put(s3, local / "documents", f"s3://{BUCKET}/docs/documents/")
    names = [n for n, _ in shard_names(f"s3://{BUCKET}/docs")]
    assert names == [n for n, _ in shard_names(local)]
    dedupe.run(local, tmp_path / "local", dedupe.DedupeJob(workers=1, executor="local"))
    dedupe.run(
        f"s3://{BUCKET}/docs",
        tmp_path / "remote",  # type: ignore[arg-type]
        dedupe.DedupeJob(workers=2, executor="process", dedupe=dedupe.DedupeConfig(partitions=2)),
    )
    expected = {
        p.relative_to(tmp_path / "local"): p.read_bytes()
        for p in (tmp_path / "local").rglob("*")
        if p.is_file()
    }
    got = {
        p.relative_to(tmp_path / "remote"): p.read_bytes()
        for p in (tmp_path / "remote").rglob("*")
        if p.is_file()
    }
    assert got == expected and any(b"dedupe" in v for v in got.values())
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_every_data_stage_writes_to_s3_same_bytes_as_local(
    s3: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """import → tag → dedupe → decon → mix → tokenize with every output on S3 (each stage reading the one
    before from S3): the same files, byte for byte, as the same chain on local disk; `manifest verify`
    re-hashes the S3 artifacts and their S3 inputs."""
    from tests.data_chain_support import STAGES, local_files, raw_inputs, remote_files, run_chain, tree

    raw = raw_inputs(tmp_path)
    local = tmp_path / "local"
    tokenizer = tmp_path / "tokenizer"
    run_chain(raw, str(local), tokenizer, executor="process", workers=2)
    remote = f"s3://{BUCKET}/run"
    staging = Path(os.environ["GLASSLM_STAGING"])
    left_by_a_killed_task = staging / "glasslm-task-4194304-x1y2"  # above Linux's pid_max: never alive
    left_by_a_killed_task.mkdir()
    run_chain(raw, remote, tokenizer, executor="process", workers=2)
    # nothing is left in the driver's staging: no directory per URL written, no killed task's temp dir
    assert not left_by_a_killed_task.exists()
    assert sorted(p.name for p in staging.iterdir()) == [], sorted(staging.iterdir())
    for stage in STAGES:
        expected = tree(local_files(local / stage))
        got = tree(remote_files(s3, f"{remote}/{stage}"))
        assert got == expected, stage
    assert main(["manifest", "verify", f"{remote}/tokens", "--recursive"]) == 0
    # tokenize's tasks read a staged copy of the tokenizer (which reaches any machine through the store),
    # not the driver's own path: the chain above tokenized with it, so the store delivered it
    from glasslm.data.tokenize import TokenizeConfig, plan

    held, train, _ = plan(f"{remote}/mix", tokenizer, f"{remote}/tokens-again", TokenizeConfig())
    staging = storage.staging_dir(f"{remote}/tokens-again")
    for task in (*held, *train):
        assert staging in task.tokenizer.parents
        assert task.tokenizer.read_bytes() == (tokenizer / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert main(["manifest", "show", f"{remote}/tokens"]) == 0  # was a TypeError traceback
    shown = capsys.readouterr().out
    assert f"{remote}/mix" in shown and f"{remote}/corpus" in shown
    # the S3 artifacts name their S3 inputs relative to themselves, as local ones do
    tokens = json.loads(s3.cat_file(f"{BUCKET}/run/tokens/manifest.json"))  # type: ignore[attr-defined]
    assert tokens["inputs"][0]["path"] == "../mix"

    # verify re-hashes the objects: a changed one is reported
    s3.pipe_file(f"{BUCKET}/run/mix/ledger.parquet", b"not the ledger")  # type: ignore[attr-defined]
    report = artifacts.verify(f"{remote}/mix")
    assert not report.ok and report.changed == ["ledger.parquet"]
    assert main(["manifest", "verify", f"{remote}/tokens", "--recursive"]) == 1

    # the manifest is the commit marker: a prefix without one is no artifact and is never replaced
    s3.pipe_file(f"{BUCKET}/half/documents/a.jsonl.gz", b"partial")  # type: ignore[attr-defined]
    with pytest.raises(artifacts.ArtifactError, match="no documents artifact"):
        artifacts.find_artifact(f"s3://{BUCKET}/half", "documents")
    assert main(["data", "dedupe", f"{remote}/corpus", "--out", f"s3://{BUCKET}/half"]) == 2
    assert s3.cat_file(f"{BUCKET}/half/documents/a.jsonl.gz") == b"partial"  # type: ignore[attr-defined]

    # an --out that is, or is inside, an input on the store is refused before any work, --force or not
    # (it used to replace the corpus with dedupe's attributes, and to write tags inside the corpus)
    corpus_before = tree(remote_files(s3, f"{remote}/corpus"))
    for out, says in (
        (f"{remote}/corpus", "would replace the input"),
        (f"{remote}/corpus/", "would replace the input"),
        (f"{remote}/corpus/tags", "is inside the input artifact"),
        (f"{remote}", "would replace the input"),  # a prefix that holds the input
        ("s3://another-bucket", "a bucket's root cannot hold an artifact"),  # staging would be a bucket
    ):
        assert main(["data", "dedupe", f"{remote}/corpus", "--out", out, "--force"]) == 2, out
        assert says in capsys.readouterr().err, out
    assert tree(remote_files(s3, f"{remote}/corpus")) == corpus_before

    # re-running a stage replaces its S3 artifact whole: no stale objects, no staging prefix left
    s3.pipe_file(f"{BUCKET}/run/mix/ledger.parquet", local.joinpath("mix/ledger.parquet").read_bytes())  # type: ignore[attr-defined]
    assert main(["data", "dedupe", f"{remote}/corpus", "--out", f"{remote}/attributes/dedupe"]) == 0
    assert tree(remote_files(s3, f"{remote}/attributes/dedupe")) == tree(
        local_files(local / "attributes/dedupe")
    )
    assert not [p for p in s3.find(f"{BUCKET}/run") if ".tmp-" in p]  # type: ignore[attr-defined]


def test_a_stage_writing_to_s3_resumes_per_shard_from_the_store(s3: object, tmp_path: Path) -> None:
    """Shard tasks upload their outputs under the artifact's staging prefix, then a done marker; a stage
    killed part way is rerun and takes the finished shards from the store without computing them again
    (their objects are not rewritten); the result is the same bytes as a local output."""
    from tests.data_chain_support import local_files, raw_inputs, remote_files, tree

    raw = raw_inputs(tmp_path, shards=4, docs=100)  # ~0.1 s of tagging per shard: time to see one done
    corpus = f"s3://{BUCKET}/resume/corpus"
    assert main(["data", "import", str(raw), "--out", corpus, "--corpus.shard_bytes=100000"]) == 0
    shards = len(s3.find(f"{BUCKET}/resume/corpus/documents"))  # type: ignore[attr-defined]
    assert shards >= 6
    tag = ["data", "tag", corpus, "--taggers", "gopher,stats", "--no-progress", "--executor", "local"]
    tag += ["--workers", "1"]
    assert main([*tag, "--out", str(tmp_path / "local")]) == 0
    out = f"s3://{BUCKET}/resume/tags"
    staging = storage.staging_prefix(out).split("://", 1)[1]

    def objects() -> dict[str, object]:
        s3.invalidate_cache()  # type: ignore[attr-defined]
        found = s3.find(staging, detail=True)  # type: ignore[attr-defined]
        return {k: v["LastModified"] for k, v in found.items() if v.get("type") == "file"}

    def markers() -> int:
        return sum("/.done/" in k for k in objects())

    # killed once a shard is done: what that shard wrote is on the store, nothing is published
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "glasslm", *tag, "--out", out], env=env)
    deadline = time.time() + 120
    while markers() == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = objects()
    done = sum("/.done/" in k for k in first)
    assert 1 <= done < shards, done
    assert not s3.exists(f"{BUCKET}/resume/tags/manifest.json")  # type: ignore[attr-defined]

    # rerun: the done shards' objects stay as they were (a recomputed shard rewrites its state, whose
    # summary holds its own timing), watched until the commit removes the staging prefix
    time.sleep(1.1)  # the store's modification times have one-second resolution
    seen: dict[str, object] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update({k: v for k, v in objects().items() if k in first})
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert main([*tag, "--out", out]) == 0
    finally:
        stop.set()
        watcher.join()
    assert seen and all(seen[k] == first[k] for k in seen), (seen, first)
    manifest = json.loads(s3.cat_file(f"{BUCKET}/resume/tags/manifest.json"))  # type: ignore[attr-defined]
    assert manifest["metrics"]["shards_resumed"] == done
    assert tree(remote_files(s3, out)) == tree(local_files(tmp_path / "local"))
    assert not s3.exists(staging)  # type: ignore[attr-defined]  # the staging prefix goes with the commit


def test_an_unreachable_store_or_a_missing_client_is_one_line(tmp_path: Path) -> None:
    """A store glasslm cannot reach (or has no client for) is one error line, not a botocore traceback."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # the discard port: nothing listens
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_MAX_ATTEMPTS": "1",
    }
    cli = [sys.executable, "-m", "glasslm", "data"]
    gone = subprocess.run(
        [*cli, "import", "s3://b/raw/", "--out", str(tmp_path / "c")], env=env, capture_output=True, text=True
    )
    assert gone.returncode == 1, gone.stderr
    assert gone.stderr.startswith("glasslm: error: object store: EndpointConnectionError") and (
        "Traceback" not in gone.stderr
    )
    if "gs" in __import__("fsspec").available_protocols():
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            docs = tmp_path / "docs"
            docs.mkdir()
            (docs / "a.jsonl").write_text('{"id": "a", "text": "some text"}\n')
            assert (
                subprocess.run(
                    [*cli, "import", str(docs), "--out", str(tmp_path / "corpus")], env=env
                ).returncode
                == 0
            )
            tag = subprocess.run(
                [*cli, "tag", str(tmp_path / "corpus"), "--taggers", "stats", "--out", "gs://b/tags"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            assert tag.returncode == 2 and "gcsfs" in tag.stderr and "Traceback" not in tag.stderr, tag.stderr
