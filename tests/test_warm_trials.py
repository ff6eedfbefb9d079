"""Warm trials: one Tune actor trains trial after trial, and nothing of one trial leaks into the next.

A real Tune run (the held-out stage's Tuner on one fold, one slot) trains three configurations in one reused
process: small, big, small. The second small run must repeat the first bit for bit (same seed,
same curve, same loss, same memory) although its process has since trained a model four times its
size: no seed, thread setting, registry state or memory peak carries over.
"""

from __future__ import annotations

import time

import psutil
import pytest
import ray
import yaml

from search.data.spec import DataSpec
from search.data.tiles import prepare
from search.execution.held_out import held_out_rows, held_out_tuner
from search.execution.trial import TrialResources, TrialSetup
from search.plan.space import parse_space
from tests.conftest import TEST_CHIP, VAL_CHIP, small_space


def config(batch_size: int, order: int) -> dict:
    return {"tier": 2, "backbone": "em_prithvi", "quantization_bits": 16, "lora_rank": 0,
            "gradient_checkpointing": False, "learning_rate": 1e-3, "batch_size": batch_size, "predicted_gb": None,
            "trial_number": None, "role": "winner", "source_trial_id": f"s{order}"}


@pytest.fixture(scope="module")
def workers_before(embedded_ray) -> set[int]:
    """The shared Ray's worker processes before this module's trials (earlier tests' Ray Train runs leave Train's
    own session actors, such as its autoscaling coordinator, which live as long as that Ray)."""
    return {p.pid for p in worker_processes()}


@pytest.fixture(scope="module")
def sequence(real_chips, tmp_path_factory, workers_before):
    tmp = tmp_path_factory.mktemp("warm")
    raw = small_space(real_chips, tiers={2: ["em_prithvi"]}, **{
        "training.epochs": 2, "training.batch_size": [2, 8], "evaluation.seeds": 1})
    space = parse_space(raw, "space.yaml")
    prepared = prepare(DataSpec(str(real_chips), "terramesh", ("S1RTC", "S2L2A"), 10, 112, (VAL_CHIP,), (TEST_CHIP,)),
                       tmp / "data", 0, folds=2, warn=lambda line: None)
    setup = TrialSetup(yaml.safe_dump(raw), "space.yaml", None, 0, str(prepared.root), str(tmp),
                       TrialResources(1, 1.0, 0.0))
    grid = held_out_tuner(space, [config(2, 1), config(8, 2), config(2, 3)], [0], setup, max_concurrent=1).fit()
    return sorted(held_out_rows(grid, space), key=lambda r: r["source_trial_id"])


def test_one_process_trains_every_trial_and_imports_once(sequence):
    assert [r["status"] for r in sequence] == ["completed"] * 3, [r["error"] for r in sequence]
    assert len({r["pid"] for r in sequence}) == 1
    assert [r["trials_before_in_process"] for r in sequence] == [0, 1, 2]
    first, *later = sequence
    assert first["import_seconds"] > 1.0 and all(r["import_seconds"] == 0.0 for r in later)
    assert all(r["setup_seconds"] < first["setup_seconds"] + first["import_seconds"] for r in later)


def test_same_seed_is_bit_identical_in_a_fresh_and_a_reused_process(sequence):
    fresh, _, reused = sequence
    assert reused["val_miou_per_epoch"] == fresh["val_miou_per_epoch"]
    assert reused["train_loss"] == fresh["train_loss"] and reused["test_miou"] == fresh["test_miou"]
    assert reused["chip_confusion"] == fresh["chip_confusion"] is not None


def test_each_trial_reports_its_own_peak_after_a_larger_one(sequence):
    small, big, small_again = sequence
    assert big["activation_gb"] > 3.5 * small["activation_gb"]  # batch 8 against batch 2
    assert big["peak_gb"] > small["peak_gb"] + 0.03
    assert small_again["peak_gb"] == small["peak_gb"]
    assert small_again["activation_gb"] == small["activation_gb"] < big["activation_gb"]


def worker_processes() -> list[psutil.Process]:
    """The Ray worker processes of this test session's Ray: the raylet's children, its agents aside."""
    (node,) = ray.nodes()
    (raylet,) = [p for p in psutil.process_iter(["cmdline"])
                 if any(node["RayletSocketName"] in arg for arg in p.info["cmdline"] or [])
                 and "raylet" in (p.info["cmdline"] or [""])[0]]
    return [p for p in raylet.children() if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::")
            and not p.cmdline()[0].endswith("Agent")]


def test_embedded_ray_keeps_no_idle_worker_that_tune_would_not_use(sequence, workers_before):
    """Ray prestarts a worker per CPU for the driver's empty runtime environment; Tune's trial actors carry one of
    their own, so such workers would only sit idle beside the trials' (search/execution/cluster.py turns Ray's
    prestart off). Once the trials are over, no idle worker is left, nor any worker the trials started."""
    deadline = time.monotonic() + 20
    while alive := [p for p in worker_processes() if p.pid not in workers_before or p.cmdline()[0] == "ray::IDLE"]:
        assert time.monotonic() < deadline, [p.cmdline()[0] for p in alive]
        time.sleep(1)
