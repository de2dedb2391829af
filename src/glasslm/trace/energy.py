"""Energy (kWh) and carbon (kg CO₂e) of a training run — or of every stage of a pipeline run, data stages
included (``pipeline_energy``) — from what the run recorded, with the method stated.

Inputs, all read from the run directory:

- ``manifest.json`` metrics (``wall_s``, ``device``, ``world_size``, ``energy_j``) written by the trainer
  (``src/glasslm/train/trainer.py``), or ``config.yaml`` plus ``metrics.jsonl`` for a run still going;
- ``metrics.jsonl`` rows: ``wall_s`` (cumulative across resumes), ``cpu_w`` (RAPL package power),
  ``gpuN_w`` (NVML power of rank 0's GPU), ``energy_j`` (the trainer's cumulative counter), each
  averaged since the previous row (``src/glasslm/train/metrics.py``). Missing fields are normal.

Method, in order of preference:

1. **measured**: the trainer's cumulative energy counter (RAPL/NVML energy counters), else the sum of
   per-row average watts × the wall time between rows. The power meter runs on rank 0 and sees rank 0's
   GPU only, so on several GPUs the GPU part is scaled by the world size (stated in the output).
2. **TDP estimate**: device TDP × number of devices × wall time (for CPUs: watts per core × cores).

Then facility energy = device energy × PUE, and CO₂e = facility kWh × grid intensity. The defaults
are stated in ``EnergyConfig`` with their sources and can be overridden (``--energy.pue=1.2``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.artifacts import ArtifactError

# Board power limits from the vendors' datasheets (SXM/OAM modules where both exist).
DEFAULT_TDP_WATTS = {
    "H200": 700.0,  # NVIDIA H200 SXM datasheet: up to 700 W
    "H100": 700.0,  # NVIDIA H100 SXM datasheet: up to 700 W
    "A100": 400.0,  # NVIDIA A100 SXM datasheet: 400 W
    "L40S": 350.0,  # NVIDIA L40S datasheet: 350 W
    "A10G": 150.0,  # NVIDIA A10 datasheet: 150 W
    "MI300X": 750.0,  # AMD Instinct MI300X datasheet: 750 W
}


@dataclass
class EnergyConfig:
    # GPU TDP by a substring of the device name; a GPU not listed here needs ``tdp_watts`` set.
    tdp_watts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TDP_WATTS))
    # CPU estimate: a server CPU's TDP over its cores is ~10 W (e.g. 205 W / 20 cores; 280 W / 32 cores);
    # the per-core convention follows Green Algorithms (Lannelongue et al., 2021).
    cpu_watts_per_core: float = 10.0
    # 1.0 counts the devices only. Data centres add cooling and power delivery: Uptime Institute's
    # annual survey puts the industry average near 1.5-1.6; hyperscalers report ~1.1.
    pue: float = 1.0
    # US average 2023: 1.53e9 t CO2 / 4.18e12 kWh = 366 g CO2/kWh (US EIA FAQ "How much carbon dioxide
    # is produced per kilowatthour of U.S. electricity generation?"). CO2 only, used as CO2e.
    grid_gco2e_per_kwh: float = 366.0


@dataclass
class EnergyReport:
    run: str
    device: str
    world_size: int
    wall_s: float
    device_hours: float
    method: str  # "measured", "tdp-estimate" or "measured+tdp-estimate"
    method_detail: str
    device_kwh: float
    pue: float
    kwh: float
    grid_gco2e_per_kwh: float
    kg_co2e: float
    sources_kwh: dict[str, float] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows, skipping a half-written or unparsable line (a run may be writing it now)."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def integrate_power(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Joules per power source (``cpu_w``, ``gpu0_w``...) = Σ average watts × wall time since the last row."""
    joules: dict[str, float] = {}
    prev_wall = 0.0
    for row in rows:
        wall = _num(row.get("wall_s"))
        if wall is None:
            continue
        dt = wall - prev_wall
        prev_wall = wall
        if dt <= 0:  # a resumed run replays from its checkpoint's wall time
            continue
        for key, value in row.items():
            watts = _num(value)
            if watts is not None and re.fullmatch(r"(cpu|gpu\d+)_w", key):
                joules[key] = joules.get(key, 0.0) + watts * dt
    return joules


def _run_facts(run: Path, rows: list[dict[str, Any]]) -> tuple[float, str, int, float | None]:
    """(wall seconds, device name, world size, trainer's energy counter in J or None)."""
    metrics: dict[str, Any] = {}
    if (run / artifacts.MANIFEST).is_file():
        metrics = artifacts.read_manifest(run).get("metrics") or {}
    walls = [w for r in rows if (w := _num(r.get("wall_s"))) is not None]
    wall = _num(metrics.get("wall_s")) or (max(walls) if walls else None)
    if wall is None:
        raise ArtifactError(
            f"{run}: no wall time recorded (no wall_s in manifest.json metrics or metrics.jsonl)"
        )
    energies = [e for r in rows if (e := _num(r.get("energy_j"))) is not None]
    energy = _num(metrics.get("energy_j"))
    if energy is None and energies:
        energy = energies[-1]
    device = str(metrics.get("device") or next((r["device"] for r in rows if r.get("device")), "unknown"))
    world = int(_num(metrics.get("world_size")) or 1)
    return wall, device, world, energy


def find_run(path: str | Path) -> Path:
    path = Path(path)
    if (path / "metrics.jsonl").is_file() or (
        (path / artifacts.MANIFEST).is_file() and artifacts.read_manifest(path).get("kind") == "train_run"
    ):
        return path
    if (path / "train" / "metrics.jsonl").is_file() or (path / "train" / artifacts.MANIFEST).is_file():
        return path / "train"
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such directory (expected a pipeline run or a training run)")
    runs = [rel for rel in TRAINING_STAGES.values() if (path / rel / "metrics.jsonl").is_file()]
    if runs:  # a run made verb by verb (no pipeline.json): name what can be counted
        raise ArtifactError(
            f"{path}: not a pipeline run (no pipeline.json) nor a training run; it holds the training runs "
            f"{', '.join(runs)}: give one (glasslm energy {path / runs[0]})"
        )
    raise ArtifactError(f"{path}: not a training run (no metrics.jsonl here or in train/)")


def _cpu_cores(device: str) -> int | None:
    m = re.search(r"\((\d+) cores\)", device)
    return int(m.group(1)) if m else None


def tdp_estimate(device: str, world: int, wall_s: float, config: EnergyConfig) -> tuple[float, str]:
    """(joules, how) from TDP × devices × wall time."""
    if device.startswith("cpu"):
        cores = _cpu_cores(device)
        if cores is None:
            raise ArtifactError(f"device '{device}': core count unknown; cannot estimate CPU power")
        watts = config.cpu_watts_per_core * cores
        # Processes of a CPU run share the one machine's cores: count the cores once.
        return (
            watts * wall_s,
            f"TDP estimate: {config.cpu_watts_per_core:g} W/core × {cores} cores × wall time",
        )
    match = next((k for k in sorted(config.tdp_watts, key=len, reverse=True) if k in device), None)
    if match is None:
        raise ArtifactError(
            f"device '{device}': no TDP known; set one with --energy.tdp_watts.'<name>'=WATTS "
            f"(known: {', '.join(config.tdp_watts)})"
        )
    watts = config.tdp_watts[match]
    return watts * world * wall_s, f"TDP estimate: {watts:g} W ({match}) × {world} device(s) × wall time"


def run_energy(run_dir: str | Path, config: EnergyConfig | None = None) -> EnergyReport:
    """kWh and kg CO₂e of a training run, measured where the run recorded power, else estimated."""
    config = config or EnergyConfig()
    run = find_run(run_dir)
    rows = read_rows(run / "metrics.jsonl")
    wall, device, world, counter_j = _run_facts(run, rows)
    per_source = integrate_power(rows)
    gpu_sources = [k for k in per_source if k.startswith("gpu")]
    assumptions = []
    if counter_j is not None or per_source:
        method = "measured"
        if counter_j is not None:
            joules = counter_j
            detail = "measured: the trainer's cumulative energy counter (RAPL/NVML energy counters)"
        else:
            joules = sum(per_source.values())
            detail = "measured: Σ recorded average watts × wall time between metrics rows"
        if world > 1 and gpu_sources:
            # Rank 0 measures its own GPU; the others ran the same steps for the same time.
            gpu_j = sum(per_source[k] for k in gpu_sources)
            joules += gpu_j * (world - 1)
            detail += f"; rank 0's GPU energy × {world} for {world} GPUs"
            assumptions.append("all GPUs drew what rank 0's GPU drew")
        if not device.startswith("cpu") and not gpu_sources:
            # The GPUs draw most of the power of a GPU run; leaving them out would understate it badly.
            gpu_j, gpu_how = tdp_estimate(device, world, wall, config)
            joules += gpu_j
            method = "measured+tdp-estimate"
            detail += f"; GPUs not readable, added {gpu_how}"
            assumptions.append("GPUs assumed at TDP for the whole run (NVML power not readable)")
        if "cpu_w" in per_source or counter_j is not None:
            assumptions.append("RAPL covers the CPU packages only (not DRAM, disks, fans, network)")
    else:
        method = "tdp-estimate"
        joules, detail = tdp_estimate(device, world, wall, config)
        assumptions.append("no power samples in metrics.jsonl: devices assumed at TDP for the whole run")
    device_kwh = joules / 3.6e6
    kwh = device_kwh * config.pue
    devices = 1 if device.startswith("cpu") else world
    return EnergyReport(
        run=str(run),
        device=device,
        world_size=world,
        wall_s=wall,
        device_hours=wall * devices / 3600,
        method=method,
        method_detail=detail,
        device_kwh=device_kwh,
        pue=config.pue,
        kwh=kwh,
        grid_gco2e_per_kwh=config.grid_gco2e_per_kwh,
        kg_co2e=kwh * config.grid_gco2e_per_kwh / 1000,
        sources_kwh={k: v / 3.6e6 for k, v in sorted(per_source.items())},
        assumptions=assumptions,
    )


# The pipeline stages that are training runs (their own metrics.jsonl, measured power where readable).
TRAINING_STAGES = {"train": "train", "sft": "adapt/sft", "dpo": "adapt/dpo", "rl": "adapt/rl"}


def this_cpu() -> str:
    """This machine's CPU as the trainer names it ("cpu: MODEL (N cores)"), without importing torch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores)"


def _estimated_kwh(device: str, world: int, seconds: float, config: EnergyConfig) -> float:
    """kWh at the wall (PUE included) of ``seconds`` on ``world`` devices, by TDP."""
    return tdp_estimate(device, world, seconds, config)[0] / 3.6e6 * config.pue


def pipeline_energy(run_dir: str | Path, config: EnergyConfig | None = None) -> dict[str, Any]:
    """Energy of every stage of a ``glasslm pipeline`` run (``RUN/pipeline.json`` holds each stage's time).

    Training stages: ``run_energy`` of their run directory. The other stages (data curation, tokenizer,
    eval, export, index, report) ran on the CPU: TDP estimate over the stage's wall time on the CPU the
    pipeline recorded (this machine's when an older pipeline.json has none — said in the assumptions)."""
    config = config or EnergyConfig()
    run = Path(run_dir)
    state_file = run / "pipeline.json"
    if not state_file.is_file():
        raise ArtifactError(
            f"{run}: not a pipeline run (no pipeline.json); `glasslm energy` on a training run "
            "counts that training only"
        )
    state = json.loads(state_file.read_text())
    stages: list[dict[str, Any]] = []
    assumptions: list[str] = []
    for name, info in state.items():
        if not isinstance(info, dict) or info.get("status") != "done":
            continue
        if name in TRAINING_STAGES and (run / TRAINING_STAGES[name] / "metrics.jsonl").is_file():
            e = run_energy(run / TRAINING_STAGES[name], config)
            # The stage ran longer than its training loop (an adaptation stage's before/after evaluations,
            # chat suite and DPO's reference pass): that time is a TDP estimate on the same device(s).
            seconds = float(info.get("seconds") or 0.0)
            outside = max(0.0, seconds - e.wall_s)
            extra_kwh = _estimated_kwh(e.device, e.world_size, outside, config)
            if outside > 0:
                note = "training stages: the stage's time outside the training loop (evaluations) is a TDP estimate"
                if note not in assumptions:
                    assumptions.append(note)
            kwh = e.kwh + extra_kwh
            stages.append(
                {
                    "stage": name,
                    "device": e.device,
                    "wall_s": max(seconds, e.wall_s),
                    "training_wall_s": e.wall_s,
                    "method": e.method
                    if outside <= 0 or "tdp-estimate" in e.method
                    else f"{e.method}+tdp-estimate",
                    "kwh": kwh,
                    "kg_co2e": kwh * config.grid_gco2e_per_kwh / 1000,
                }
            )
            continue
        device = info.get("cpu")
        if device is None:
            device = this_cpu()
            note = "stages without a recorded CPU were assumed to have run on this machine's CPU"
            if note not in assumptions:
                assumptions.append(note)
        seconds = float(info.get("seconds") or 0.0)
        kwh = _estimated_kwh(device, 1, seconds, config)
        stages.append(
            {
                "stage": name,
                "device": device,
                "wall_s": seconds,
                "method": "tdp-estimate",
                "kwh": kwh,
                "kg_co2e": kwh * config.grid_gco2e_per_kwh / 1000,
            }
        )
    assumptions.append(
        f"non-training stages: {config.cpu_watts_per_core:g} W/core x cores x the stage's wall time"
    )
    total_kwh = sum(s["kwh"] for s in stages)
    return {
        "run": str(run),
        "stages": stages,
        "wall_s": sum(s["wall_s"] for s in stages),
        "kwh": total_kwh,
        "kg_co2e": total_kwh * config.grid_gco2e_per_kwh / 1000,
        "pue": config.pue,
        "grid_gco2e_per_kwh": config.grid_gco2e_per_kwh,
        "assumptions": assumptions,
    }
