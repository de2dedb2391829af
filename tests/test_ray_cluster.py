"""Ray across machines (issue #19): a 2-node Ray cluster on this machine — a head and a second node,
one CPU each, separate temp dirs — runs every data stage with ``--executor ray`` over objects in a
local S3 server, with the same bytes as the process executor; a Ray worker killed mid-stage costs a
retry, never an output. The nodes are ``ray start --block`` children of this test, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("moto.server")

from glasslm.cli import main  # noqa: E402
from tests.data_chain_support import (  # noqa: E402
    STAGES,
    local_files,
    raw_inputs,
    remote_files,
    run_chain,
    tree,
)
from tests.test_s3 import BUCKET
from tests.test_s3 import s3 as s3  # noqa: E402  # the moto server fixture, shared

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(args: list[str], temp: Path) -> subprocess.Popen[bytes]:
    """A Ray node with its own temp dir and its own GLASSLM_STAGING (``temp/staging``), as a node on
    another machine has: nothing the driver stages locally is where its tasks look."""
    temp.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(temp), *args],
        env={**os.environ, "GLASSLM_STAGING": str(temp / "staging")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as one, never by name
    )


def _wait_for_nodes(address: str, count: int, timeout: float = 120.0) -> None:
    """Until ``count`` nodes are alive (in a child process: this one joins the cluster per stage)."""
    code = (
        "import ray, time\n"
        f"deadline = time.time() + {timeout}\n"
        "while True:\n"
        "    try:\n"
        f"        ray.init(address={address!r}, log_to_driver=False)\n"
        "        break\n"
        "    except ConnectionError:\n"
        "        assert time.time() < deadline\n"
        "        time.sleep(1)\n"
        f"while len([n for n in ray.nodes() if n['Alive']]) < {count}:\n"
        "    assert time.time() < deadline, ray.nodes()\n"
        "    time.sleep(0.5)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=timeout + 30)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the node's process group (`ray start --block` and the raylet, GCS and workers it
    started), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):  # a head drains up to 30 s on SIGTERM
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what the node started outlives it otherwise


@pytest.fixture(scope="module")
def cluster(s3: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Head + second node on 127.0.0.1; started after the S3 fixture so its workers inherit the
    endpoint and credentials from the environment, as on a real cluster."""
    root = Path(tempfile.gettempdir()) / f"glr{os.getpid()}"  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen[bytes]] = []
    with pytest.MonkeyPatch.context() as mp:
        # `ray start` turns token authentication on by default; a driver reads its token when Ray is first
        # imported, which pytest has done before this fixture, so this throwaway cluster runs without.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        try:
            nodes.append(_node(["--head", "--port", str(port), "--include-dashboard=false"], root / "head"))
            _wait_for_nodes(address, 1)
            nodes.append(_node(["--address", address], root / "node2"))
            _wait_for_nodes(address, 2)
            mp.setenv("RAY_ADDRESS", address)
            yield nodes
        finally:
            for proc in reversed(nodes):
                _stop(proc)
            shutil.rmtree(root, ignore_errors=True)
    assert all(p.poll() is not None for p in nodes)


def _task_file(path: Path) -> bool:
    """A file only a shard task writes (scratch state, token parts, per-shard outputs), never the driver
    (import, its indexes, ledgers and manifests; dedupe's single-driver index writes the attributes)."""
    text = path.as_posix()
    return (
        path.name.endswith(".state.npz")
        or re.fullmatch(r"task-\d+\..*\.npy", path.name) is not None
        or ("/work-" in text and ("/attributes/" in text or "/out/" in text))
        or (
            "/artifact.tmp-" in text and text.endswith(".jsonl.gz") and ("-decon/" in text or "-mix/" in text)
        )
    )


@contextlib.contextmanager
def _watching(root: Path) -> Iterator[list[Path]]:
    """The task files that appear below the driver's staging directory ``root`` meanwhile."""
    seen: list[Path] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            # A temporary directory renamed or removed mid-sweep ends that sweep, not the watching.
            with contextlib.suppress(FileNotFoundError):
                seen.extend(p for p in root.rglob("*") if p.is_file() and _task_file(p) and p not in seen)
            time.sleep(0.01)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _put(fs: object, local: Path, url: str) -> None:
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"{url}{path.name}")  # type: ignore[attr-defined]


def test_two_node_ray_runs_every_stage_on_s3_with_the_process_executors_bytes(
    s3: object, cluster: list[subprocess.Popen[bytes]], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    raw = raw_inputs(tmp_path)
    _put(s3, raw, f"s3://{BUCKET}/ray-raw/")
    tokenizer = tmp_path / "tokenizer"
    baseline = tmp_path / "process"
    run_chain(f"s3://{BUCKET}/ray-raw/", str(baseline), tokenizer, executor="process", workers=2)
    remote = f"s3://{BUCKET}/ray-run"
    staging = Path(os.environ["GLASSLM_STAGING"])  # the driver's (tests/test_s3.py's fixture)
    with _watching(staging) as written:
        run_chain(f"s3://{BUCKET}/ray-raw/", remote, tokenizer, executor="ray", workers=2)
    # the tasks wrote in their nodes' own staging directories and uploaded from there, never here
    assert not written, written[:5]
    nodes = Path(tempfile.gettempdir()) / f"glr{os.getpid()}"
    assert [n for n in ("head", "node2") if (nodes / n / "staging").is_dir()]
    for stage in STAGES:
        assert tree(remote_files(s3, f"{remote}/{stage}")) == tree(local_files(baseline / stage)), stage
    err = capfd.readouterr().err
    for stage in ("dedupe: hash", "decon", "mix: write"):  # progress from the driver, Ray or not
        assert re.search(
            rf"^{stage}: done (\d+)/\1 shards(, .* MB/s\)| in [\d.]+ s); quarantined 0$", err, re.M
        ), stage
    assert main(["manifest", "verify", f"{remote}/tokens", "--recursive"]) == 0


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _running(task: str, nodes: list[subprocess.Popen[bytes]]) -> list[int]:
    """Our cluster's worker processes now executing ``task`` (Ray titles them ``ray::<task>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(f"ray::{task}".encode()) and _descends_from(
            int(entry.name), {p.pid for p in nodes}
        ):
            found.append(int(entry.name))
    return found


def test_a_killed_ray_worker_costs_a_retry_not_an_output(
    cluster: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    raw = raw_inputs(tmp_path, shards=4, docs=100)  # ~1 s of tagging per shard: time to catch one running
    corpus = tmp_path / "corpus"
    assert main(["data", "import", str(raw), "--out", str(corpus), "--corpus.shard_bytes=250000"]) == 0
    tag = ["data", "tag", str(corpus), "--taggers", "gopher,stats", "--no-progress", "--workers", "2"]
    assert main([*tag, "--executor", "process", "--out", str(tmp_path / "process")]) == 0

    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.time() + 60
        while not killed and time.time() < deadline:
            for pid in _running("tag_shard", cluster):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one)
    killer.start()
    assert main([*tag, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    killer.join()
    assert killed, "no Ray worker was caught running tag_shard"
    assert local_files(tmp_path / "ray").keys() == local_files(tmp_path / "process").keys()
    assert tree(local_files(tmp_path / "ray")) == tree(local_files(tmp_path / "process"))


def test_relative_paths_name_the_drivers_directory_on_a_ray_cluster(
    cluster: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nodes were started elsewhere (`ray start` in the test's directory): a task's relative
    paths are the driver's, as with the process executor (they failed, and wrote stray files below
    the raylet's directory)."""
    raw = raw_inputs(tmp_path, shards=2, docs=20)
    nodes_dir = Path.cwd()  # where the fixture ran `ray start`
    monkeypatch.chdir(tmp_path)
    assert main(["data", "import", str(raw), "--out", "run/corpus", "--corpus.shard_bytes=20000"]) == 0
    tag = ["data", "tag", "run/corpus", "--taggers", "stats", "--no-progress", "--workers", "2"]
    assert main([*tag, "--executor", "process", "--out", "run/process"]) == 0
    assert main([*tag, "--executor", "ray", "--out", "run/ray"]) == 0
    assert tree(local_files(tmp_path / "run/ray")) == tree(local_files(tmp_path / "run/process"))
    assert not (nodes_dir / "run").exists()  # nothing written below the nodes' directory
