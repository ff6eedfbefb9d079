"""Every command the README shows, with the smallest arguments that exercise it, and its output read. (`run`,
`report`, `check`, `memory --test`, `bench backbones` and `capacity` run in their own test files.)

Commands whose process is part of what they measure or show run as a user runs them, `python -m search ...` in a
fresh process: the peer bench (a fresh search's wall time and console), the load bench (the processes a search
leaves behind), calibrate (what it may import), imports (an interpreter's first import). The others go through
the same entry point, `search.__main__.main`, in this process, which has the model stack imported and the
session's Ray up: a fresh interpreter would add ~10 s of imports (and the ASHA bench a Ray start) to each and check
nothing more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from search.__main__ import main
from tests.conftest import REPO, small_space

BLOCK = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ImportError(f"refused in this test: {{name}}", name=name)
sys.meta_path.insert(0, Refuse())
from search.__main__ import main
code = main(sys.argv[1:])
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED}))
sys.exit(code)
"""


def search(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_calibrate_runs_where_ray_terratorch_rasterio_and_lightning_cannot_be_imported(tmp_path):
    """A bare PyTorch container: the command must not import them; backbones that need TerraTorch are skipped."""
    blocked = ("ray", "terratorch", "rasterio", "lightning")
    out = tmp_path / "calibration.json"
    done = subprocess.run([sys.executable, "-c", BLOCK.format(BLOCKED=set(blocked)), "calibrate", "--backbones",
                           "internvl2_4b", "em_clay", "--techniques", "none", "4bit", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported: []" in done.stdout
    calibration = json.loads(out.read_text())
    assert calibration["device"] == "cpu"
    measured = [r for r in calibration["rows"] if "skipped" not in r]
    assert [(r["backbone"], r["technique"]) for r in measured] == [("internvl2_4b", "none"), ("internvl2_4b", "4bit")]
    assert {r["backbone"] for r in calibration["rows"] if "skipped" in r} == {"em_clay"}
    for row in measured:  # the CPU accounting against the estimator's total: within 15% on these
        assert abs(row["error"]) < 0.15 and row["allocated_peak_gb"] > 0
    assert 0.85 < calibration["step"] < 1.15 and 0.85 < calibration["weights"] < 1.15
    assert "corrections (median measured / predicted)" in done.stdout


def test_memory_validate_runs_as_a_command_and_covers_the_reference_cnn(tmp_path, capsys):
    assert main(["memory", "--validate", "--backbones", "em_cnn", "em_clay", "--out", str(tmp_path)]) == 0
    rows = pq.read_table(tmp_path / "memory_validation.parquet").to_pylist()
    cnn = [r for r in rows if r["backbone"] == "em_cnn"]
    assert cnn and all(abs(r["relative_error"]) < 0.1 for r in cnn)  # the U-Net's estimate, measured
    assert "em_cnn" in capsys.readouterr().out


def test_fullscale_bench_at_tiny_scale_measures_an_ordinary_and_a_tuned_process(tmp_path):
    """The measuring processes are fresh ones the bench starts itself (python -m benchmarks.fullscale)."""
    assert main(["bench", "fullscale", "--scale", "tiny", "--backbones", "internvl2_4b", "--checkpoints",
                 str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    rows = pq.read_table(tmp_path / "out" / "fullscale.parquet").to_pylist()
    assert [r["process"] for r in rows] == ["ordinary", "thresholds in env"]
    for r in rows:
        assert r["load_peak_gb"] > 0 and r["predicted_load_gb"] > 0 and r["step_peak_gb"] > 0
    assert not (tmp_path / "ckpt" / "internvl2_4b").exists()  # removed unless --keep


def test_peer_bench_alternates_the_peer_and_this_search_and_prints_the_ratio(real_chips, tmp_path):
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "run").write_text("#!/bin/bash\necho 'terratorch-iterate: trials=1 wall_s=12.5 best_val_mIoU=0.1'\n")
    space = small_space(real_chips, tiers={2: ["em_clay"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": 1, "training.epochs": 1})
    (peer / "em-search-equivalent.yaml").write_text(yaml.safe_dump(space))
    done = search("bench", "peer", "--peer-dir", str(peer), "--rounds", "1", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terratorch-iterate       0      1     12.5" in done.stdout
    assert "ratio em-search / peer = " in done.stdout
    assert list((tmp_path / "out").glob("*-peer-bench.parquet"))
    # What a user sees of a run on embedded Ray: where to watch it, one line per trial start and end, the table and
    # verdict lines; nothing they can do nothing about (Ray's token notice, Tune's TensorBoard and results hints).
    (console,) = (tmp_path / "out").glob("*-console.txt")
    printed = console.read_text()
    assert "Ray dashboard: http://127.0.0.1:" in printed and "`ray get-auth-token` prints it" in printed
    assert "trial 1/1 started: em_clay" in printed and "trial 1/1 done: val " in printed
    for unwanted in ("Token authentication is enabled", "TensorBoard", "View detailed results", "Traceback",
                     "Warning", "WARNING"):
        assert unwanted not in printed, printed
    lines = printed.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("trial    backbone")):][:3]
    assert len(table) == 3 and all(len(line) <= 80 for line in table), table  # the trial table fits 80 columns


def test_capacity_simulation_packs_more_trials_than_one_gpu_each_and_fills_no_gpu_past_its_memory(capsys, no_ray):
    """The replay starts a Ray of its own, with simulated GPUs (so the session's shared one is down: `no_ray`)."""
    assert main(["capacity", "--simulate", str(REPO / "spaces/tier3.yaml"), "--batch-sizes", "1",
                 "--gpus-per-node", "2", "--repeats", "4", "--time-scale", "600"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("QLoRA trials on"):]
    whole, packed = (line.split()[-4:] for line in table.splitlines()[2:4])  # most, mean, wall h, fullest GB
    assert int(whole[0]) == 2 and int(packed[0]) >= 3 * int(whole[0])  # two GPUs: one trial each, or 3+ packed
    assert float(packed[3]) <= 80.0 and float(whole[3]) <= 80.0 and float(packed[2]) < float(whole[2])


def test_the_example_base_config_trains_under_terratorch_as_it_stands():
    done = subprocess.run([sys.executable, "-m", "terratorch", "fit", "-c", "spaces/base/flood_fit.yaml",
                           "--trainer.fast_dev_run=true"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in done.stdout + done.stderr


def test_load_benchmark_runs_and_writes_its_table(real_chips, tmp_path):
    done = search("load", "--trials", "1", "--data-root", str(real_chips), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    printed = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    assert printed["completed"] == "1" and printed["leftover_processes"] == "0"
    assert float(printed["trials_per_minute"]) > 0 and (tmp_path / "out" / "load1.parquet").is_file()


def test_asha_benchmark_runs_both_arms_and_prints_their_table(real_chips, tmp_path, capsys, embedded_ray):
    space = small_space(real_chips, tiers={2: ["em_clay"]}, **{
        "techniques.gradient_checkpointing": [False], "training.num_samples": 1, "training.epochs": 2})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    assert main(["bench", "asha", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "fifo: 1 trials" in printed and "asha: 1 trials" in printed


def test_imports_bench_pauses_the_collector_freezes_what_it_imported_and_leaves_the_collector_on(tmp_path):
    """`bench imports` on a small module (the default, a trial's model stack, takes ~25 s): the same modules
    either way; paused, the collector runs fewer times during the import, is on again afterwards, and what
    the import created is frozen out of later collections."""
    done = search("bench", "imports", "--rounds", "1", "--module", "yaml", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| collector on |" in done.stdout and "| collector paused |" in done.stdout
    on, paused = pq.read_table(tmp_path / "imports.parquet").to_pylist()
    assert on["mode"] == "collector on" and paused["mode"] == "collector paused"
    assert on["modules"] == paused["modules"] > 0
    assert paused["collections_during_import"] < on["collections_during_import"]
    assert on["collector_enabled_after"] and paused["collector_enabled_after"]
    assert on["frozen_objects"] == 0 and paused["frozen_objects"] > 1000
