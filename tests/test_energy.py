"""Energy and carbon of a training run, from synthetic metrics.jsonl files laid out as the trainer writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glasslm import artifacts
from glasslm.cli import main
from glasslm.trace.energy import EnergyConfig, run_energy


def make_run(root: Path, rows: list[dict[str, Any]], raw_tail: str = "", **metrics: Any) -> Path:
    run = root / "runs" / "demo" / "train"
    with artifacts.create_artifact(run, "train_run") as art:
        text = "".join(json.dumps(r) + "\n" for r in rows) + raw_tail
        (art.path / "metrics.jsonl").write_text(text)
        art.metrics.update(metrics)
    return run


def test_trainer_energy_counter_is_used_when_recorded(tmp_path: Path) -> None:
    rows = [{"step": s, "wall_s": 10.0 * s, "cpu_w": 40.0, "energy_j": 400.0 * s} for s in (1, 2, 3)]
    run = make_run(
        tmp_path, rows, wall_s=30.0, device="cpu: Test CPU (2 cores)", world_size=1, energy_j=36_000.0
    )
    report = run_energy(run)
    assert report.method == "measured" and "energy counter" in report.method_detail
    assert report.device_kwh == pytest.approx(0.01)
    assert report.kwh == pytest.approx(0.01)  # default PUE 1.0
    assert report.kg_co2e == pytest.approx(0.01 * 366 / 1000)
    assert report.sources_kwh["cpu_w"] == pytest.approx(40.0 * 30 / 3.6e6)


def test_power_samples_are_integrated_and_scaled_to_all_gpus(tmp_path: Path) -> None:
    rows = [
        {"step": 1, "wall_s": 10.0, "cpu_w": 50.0, "gpu0_w": 300.0},
        {"step": 2, "wall_s": 20.0, "cpu_w": 50.0, "gpu0_w": 300.0},
        {"step": 2, "wall_s": 15.0, "cpu_w": 999.0, "gpu0_w": 999.0},  # a resume replaying: time went back
        {"step": 3, "wall_s": 30.0, "cpu_w": 50.0, "gpu0_w": float("nan")},  # unreadable sample
        {"step": 4, "loss": 2.0},  # no wall time
    ]
    make_run(tmp_path, rows, wall_s=30.0, device="NVIDIA H100 80GB HBM3", world_size=2)
    report = run_energy(tmp_path / "runs" / "demo", EnergyConfig(pue=1.5, grid_gco2e_per_kwh=100.0))
    cpu_j, gpu_j = 50.0 * 10 + 50.0 * 10 + 50.0 * 15, 300.0 * 10 + 300.0 * 10
    expected_kwh = (cpu_j + 2 * gpu_j) / 3.6e6
    assert report.method == "measured" and "× 2" in report.method_detail
    assert report.device_kwh == pytest.approx(expected_kwh)
    assert report.kwh == pytest.approx(expected_kwh * 1.5)
    assert report.kg_co2e == pytest.approx(expected_kwh * 1.5 * 100 / 1000)
    assert report.device_hours == pytest.approx(2 * 30 / 3600)


def test_tdp_estimate_without_power_samples_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"step": s, "wall_s": 900.0 * s, "loss": 3.0} for s in (1, 2, 3, 4)]
    make_run(tmp_path, rows, wall_s=3600.0, device="NVIDIA H100 80GB HBM3", world_size=4)
    assert (
        main(
            [
                "energy",
                str(tmp_path / "runs" / "demo"),
                "--energy.pue=1.2",
                "--energy.grid_gco2e_per_kwh=200",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "tdp-estimate" and "700 W (H100) × 4 device(s)" in data["method_detail"]
    assert data["device_kwh"] == pytest.approx(700 * 4 * 3600 / 3.6e6)
    assert data["kwh"] == pytest.approx(2.8 * 1.2)
    assert data["kg_co2e"] == pytest.approx(2.8 * 1.2 * 0.2)
    assert any("TDP" in a for a in data["assumptions"])
    assert main(["energy", str(tmp_path / "runs" / "demo")]) == 0
    assert "tdp-estimate" in capsys.readouterr().out


def test_cpu_tdp_and_gpu_without_nvml(tmp_path: Path) -> None:
    # A CPU run with no RAPL: watts per core × cores; a half-written last line is skipped.
    run = make_run(
        tmp_path / "a",
        [{"step": 1, "wall_s": 100.0}],
        raw_tail='{"step": 2, "wall',
        wall_s=100.0,
        device="cpu: Some CPU (8 cores)",
        world_size=2,
    )
    report = run_energy(run, EnergyConfig(cpu_watts_per_core=5.0))
    assert report.method == "tdp-estimate"
    assert report.device_kwh == pytest.approx(5.0 * 8 * 100 / 3.6e6)  # cores counted once, not per process
    # A GPU run where only RAPL was readable: the GPUs are added at TDP, and the output says so.
    run = make_run(
        tmp_path / "b",
        [{"step": 1, "wall_s": 100.0, "cpu_w": 60.0}],
        wall_s=100.0,
        device="NVIDIA A100-SXM4-40GB",
        world_size=1,
    )
    report = run_energy(run)
    assert report.method == "measured+tdp-estimate"
    assert report.device_kwh == pytest.approx((60.0 * 100 + 400.0 * 100) / 3.6e6)


def test_unknown_gpu_and_missing_run_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_run(
        tmp_path, [{"step": 1, "wall_s": 10.0}], wall_s=10.0, device="Mystery Accelerator 9000", world_size=1
    )
    assert main(["energy", str(tmp_path / "runs" / "demo")]) == 2
    assert "no TDP known" in capsys.readouterr().err
    assert (
        main(["energy", str(tmp_path / "runs" / "demo"), "--energy.tdp_watts={'Mystery': 250}", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["device_kwh"] == pytest.approx(250 * 10 / 3.6e6)
    assert main(["energy", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
