"""`search check` and `search bench` on real chips: shapes, finiteness, files written, meta counts."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from em_backbones.catalog import CATALOG
from search.__main__ import main
from search.plan.space import load_space


def test_check_prints_shapes_ranges_and_counts(capsys):
    assert main(["check", "earthmind_v1", "--img-size", "112"]) == 0
    out = capsys.readouterr().out
    assert "feature map 0: [2, 256, 4, 4] float32" in out  # SAR and optical halves of a 128-wide tiny LLM
    assert "finite: yes" in out
    assert "3.717 B as published, 3.096 B as backbone" in out


def test_check_refuses_unknown_backbone(capsys):
    assert main(["check", "internvl2_4"]) == 2
    assert "unknown backbone 'internvl2_4'" in capsys.readouterr().err


def test_bench_writes_table_parquet_and_chart(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "backbones", "--backbones", "granite_4_tiny", "em_clay", "--batch-sizes", "1", "2",
                 "--out", str(out)]) == 0
    rows = pq.read_table(out / "bench.parquet").to_pylist()
    measured = [r for r in rows if r["measured"]]
    assert {(r["backbone"], r["batch_size"]) for r in measured} == {
        ("granite_4_tiny", 1), ("granite_4_tiny", 2), ("em_clay", 1), ("em_clay", 2)}
    for name in ("granite_4_tiny", "em_clay"):
        one, two = (next(r for r in measured if r["backbone"] == name and r["batch_size"] == b) for b in (1, 2))
        assert two["forward_activation_gb"] > one["forward_activation_gb"] and one["finite"]
        full = next(r for r in rows if r["backbone"] == name and r["scale"] == "full")
        assert not full["measured"] and full["weight_gb_16bit"] == pytest.approx(2 * full["params_backbone"] / 1e9)
    assert (out / "bench.png").stat().st_size > 10_000
    assert "granite_4_tiny" in capsys.readouterr().out


@pytest.mark.parametrize("path, tier", [("spaces/tier1.yaml", 1), ("spaces/tier3.yaml", 3)])
def test_tier_spaces_name_their_tiers_backbones(path, tier):
    space = load_space(path)
    assert set(space.tiers) == {tier}
    assert all(CATALOG[name].tier == tier for name in space.tiers[tier])


def test_memory_command_writes_table_parquet_and_chart(tmp_path, capsys):
    assert main(["memory", "--backbone", "internvl2_4b", "--test", "none", "qlora_ckpt", "--out", str(tmp_path)]) == 0
    rows = pq.read_table(tmp_path / "memory_internvl2_4b.parquet").to_pylist()
    assert [r["technique"] for r in rows] == ["none", "qlora_ckpt"]
    none, qlora = rows
    assert qlora["full_predicted_peak_gb"] < 0.2 * none["full_predicted_peak_gb"]
    assert qlora["tiny_measured_gb"] < none["tiny_measured_gb"]
    assert qlora["tiny_predicted_gb"] == pytest.approx(qlora["tiny_measured_gb"], rel=0.1)
    assert (tmp_path / "memory_internvl2_4b.png").stat().st_size > 10_000
    assert "qlora_ckpt" in capsys.readouterr().out


def test_memory_command_refuses_unknown_technique(capsys):
    assert main(["memory", "--backbone", "internvl2_4b", "--test", "qlora8"]) == 2
    err = capsys.readouterr().err
    assert "unknown technique 'qlora8'" in err and len(err.strip().splitlines()) == 1
