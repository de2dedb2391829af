"""executors.map_shards: task order, on_result, errors, and the Ray executor (same bytes as processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glasslm.cli import main
from glasslm.data.executors import map_shards


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.parametrize("executor", ["local", "process"])
def test_results_come_back_in_task_order(executor):
    seen: list[tuple[int, int]] = []
    results = map_shards(
        square_and_pid, list(range(8)), workers=2, executor=executor, progress=False, on_result=seen.append
    )
    assert [r for r, _ in results] == [x * x for x in range(8)]
    assert seen == results
    pids = {p for _, p in results}
    assert (pids == {os.getpid()}) if executor == "local" else (os.getpid() not in pids)


def test_a_failing_task_raises_in_the_caller():
    with pytest.raises(ValueError, match="three"):
        map_shards(fail_on_three, [1, 2, 3, 4], workers=2, executor="process", progress=False)


def test_unknown_executor_is_refused():
    with pytest.raises(ValueError, match="unknown executor"):
        map_shards(square_and_pid, [1, 2], workers=2, executor="threads", progress=False)  # type: ignore[arg-type]


def test_ray_tag_is_byte_identical_to_the_process_pool(tmp_path: Path):
    pytest.importorskip("ray")
    from test_tag_cli import make_documents  # the module pytest imported (not a second copy)

    docs = make_documents(tmp_path / "docs")
    outs = {}
    for executor in ("process", "ray"):
        outs[executor] = tmp_path / executor
        assert (
            main(
                [
                    "data",
                    "tag",
                    str(docs),
                    "--taggers",
                    "gopher,pii,char_length",
                    "--experiment",
                    "x",
                    "--executor",
                    executor,
                    "--workers",
                    "2",
                    "--out",
                    str(outs[executor]),
                    "--no-progress",
                ]
            )
            == 0
        )
    for name in ("a-0000.jsonl.gz", "b-0000.jsonl.gz", "quarantine.jsonl"):
        assert (outs["process"] / name).read_bytes() == (outs["ray"] / name).read_bytes()


def test_pool_workers_end_with_a_driver_killed_by_sigkill() -> None:
    """A driver killed with SIGKILL runs no cleanup: its pool workers lived on, asleep, holding memory."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from glasslm.data.executors import map_shards\n"
        "map_shards(time.sleep, [60.0, 60.0], workers=2, executor='process', progress=False)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script])

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == driver.pid:
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + 60
    while len(workers := children()) < 2:
        assert time.monotonic() < deadline and driver.poll() is None, "the pool did not start"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]:
        assert time.monotonic() < deadline, f"pool workers outlived their driver: {alive}"
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
