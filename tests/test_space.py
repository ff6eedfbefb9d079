"""Space files: every bad field gives one line naming it; the define-by-run space obeys the tiers."""

from __future__ import annotations

import optuna
import pytest

from search.plan.sampling import DefineByRun, backbone_param
from search.plan.space import SpaceError, load_space, parse_space
from tests.conftest import REPO, small_space


def test_valid_space_loads_with_every_field(write_space):
    space = load_space(write_space(small_space(None)))
    assert space.tiers == {2: ("em_prithvi", "em_terramind", "em_clay")}
    assert space.techniques.choices["gradient_checkpointing"] == (False, True)
    assert space.techniques.fixed == {"quant_type": "nf4", "double_quant": True, "lora_alpha": None,
                                      "lora_dropout": 0.0}
    assert space.training.learning_rate == (3e-4, 3e-3)
    assert space.training.epochs == 2 and space.training.num_samples == 4 and space.data.tile_size == 112


@pytest.mark.parametrize("path", sorted(str(p) for p in REPO.glob("spaces/*.yaml")))
def test_repo_space_files_load(path):
    space = load_space(path)
    assert space.scale == "tiny" and space.training.num_samples >= 6
    assert space.training.epochs > space.training.grace_period


@pytest.mark.parametrize("overrides, fragment", [
    ({"tiers": {2: ["em_prithvii"]}}, "unknown backbone 'em_prithvii' (did you mean 'em_prithvi'?)"),
    ({"tiers": {5: ["em_prithvi"]}}, "field 'tiers.5'"),
    ({"tiers": {}}, "field 'tiers'"),
    ({"tiers": {2: []}}, "field 'tiers.2'"),
    ({"techniques.quantization_bits": [3]}, "field 'techniques.quantization_bits[0]': expected one of [4, 8, 16]"),
    ({"techniques.lora_rank": [-1]}, "field 'techniques.lora_rank[0]': expected an integer >= 0"),
    ({"techniques.gradient_checkpointing": ["yes"]}, "field 'techniques.gradient_checkpointing[0]'"),
    ({"training.num_samples": 0}, "field 'training.num_samples': expected an integer >= 1, got 0"),
    ({"training.epochs": 2, "training.grace_period": 3}, "field 'training.grace_period'"),
    ({"training.learning_rate": 0.01}, "field 'training.learning_rate'"),
    ({"training.learning_rate": {"low": -1, "high": 1}}, "field 'training.learning_rate.low'"),
    ({"training.batch_size": []}, "field 'training.batch_size'"),
    ({"scale": "huge"}, "field 'scale': expected 'tiny' or 'full'"),
    ({"resources.memory_budget_gb": 0}, "field 'resources.memory_budget_gb': expected a number > 0.0, got 0"),
    ({"techniques.quant_type": "int4"}, "field 'techniques.quant_type': expected one of ['nf4', 'fp4']"),
    ({"techniques.lora_dropout": 1.5}, "field 'techniques.lora_dropout': expected a number in [0, 1)"),
    ({"training.precision": "fp8"}, "field 'training.precision'"),
    ({"data.layout": "zarr"}, "field 'data.layout'"),
    ({"data.modalities": ["S3"]}, "field 'data.modalities[0]'"),
    ({"data.tile_size": 100}, "field 'data.tile_size': expected a multiple of 16"),
    ({"training.epochs_max": 3}, "unknown field 'training.epochs_max' (did you mean 'training.epochs'?)"),
    ({"tiers": {1: ["earthmind_v1"]}, "data.modalities": ["S2L2A"], "data.tile_size": 112},
     "field 'data.modalities': expected a modality of each of ['S1', 'S2'] for earthmind_v1 (missing S1)"),
    ({"resources.max_failures": -1}, "field 'resources.max_failures': expected an integer >= 0"),
    ({"resources.workers_per_trial": 0}, "field 'resources.workers_per_trial': expected an integer >= 1"),
    ({"objective": "accuracy"}, "field 'objective': expected 'accuracy_per_gb' or 'pareto', got 'accuracy'"),
    ({"training.scheduler": "hyperband"}, "field 'training.scheduler': expected 'asha' or 'fifo'"),
    ({"evaluation.top_k": -1}, "field 'evaluation.top_k': expected an integer >= 0"),
    ({"evaluation.seeds": 0}, "field 'evaluation.seeds': expected an integer >= 1"),
    ({"evaluation.repeats": 3}, "unknown field 'evaluation.repeats'"),
    ({"evaluation.reference_cnn": "yes"}, "field 'evaluation.reference_cnn': expected true or false"),
    ({"data.on_bad_chip": "ignore"}, "field 'data.on_bad_chip': expected 'skip' or 'error', got 'ignore'"),
    ({"data.val_fraction": 1.5}, "field 'data.val_fraction': expected a number in [0, 1)"),
    ({"data.val_chips": "433D_629L_3_1"}, "field 'data.val_chips': expected a list of chip ids"),
    # Defect: the same chip in both held-out splits emptied validation and failed every trial in TerraTorch.
    ({"data.val_chips": ["433D_629L_3_1"], "data.test_chips": ["433D_629L_3_1"]},
     "field 'data.test_chips': expected chips not also in data.val_chips (a chip belongs to one split; "
     "'433D_629L_3_1' is in both)"),
    # Defect: a batch of one failed every trial in UperNet's pyramid pooling BatchNorm ("Expected more than 1 value").
    ({"training.batch_size": [1, 4]}, "field 'training.batch_size': expected sizes >= 2 with decoder.name "
     "UperNetDecoder"),
])
def test_bad_field_names_itself_in_one_line(write_space, overrides, fragment):
    path = write_space(small_space(None, **overrides))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and str(path) in message


def test_unknown_top_level_key(write_space):
    with pytest.raises(SpaceError, match=r"unknown field 'tier' \(did you mean 'tiers'\?\)"):
        load_space(write_space({**small_space(None), "tier": 2}))


def test_yaml_syntax_error_reports_line(write_space):
    with pytest.raises(SpaceError, match=r"YAML syntax error at line 4, column 6"):
        load_space(write_space("name: x\ntiers:\n  2: [em_prithvi\nscale: tiny\n"))


def test_empty_file_and_missing_file(write_space, tmp_path):
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(write_space(""))
    with pytest.raises(SpaceError, match="space file not found"):
        load_space(tmp_path / "nope.yaml")


def test_yaml_tags_cannot_build_objects(write_space):
    with pytest.raises(SpaceError, match="YAML"):
        load_space(write_space("tiers: !!python/object/apply:os.system ['true']\n"))


def test_define_by_run_samples_backbones_of_the_sampled_tier():
    space = parse_space(small_space(None, **{"training.num_samples": 30}))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    suggest = DefineByRun(space)
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = suggest(trial)
        tier = trial.params["tier"]
        assert constants["backbone"] == trial.params[backbone_param(tier)]
        assert constants["backbone"] in space.tiers[tier]
        assert 3e-4 <= trial.params["learning_rate"] <= 3e-3
        seen.add(constants["backbone"])
        study.tell(trial, 0.0)
    assert seen == set(space.tiers[2])


def test_tile_size_must_fit_every_chosen_backbones_patch_stride(write_space):
    tiers = {1: ["internvl2_4b"], 2: ["em_prithvi"]}
    assert load_space(write_space(small_space(None, tiers=tiers))).data.tile_size == 112  # 7 x 16 and 4 x 28
    with pytest.raises(SpaceError, match=r"field 'data.tile_size': expected a multiple of 28 \(internvl2_4b's"):
        load_space(write_space(small_space(None, tiers=tiers, **{"data.tile_size": 96})))


def test_batch_of_one_is_fine_with_a_decoder_without_batchnorm_pooling(write_space):
    space = load_space(write_space(small_space(None, **{"training.batch_size": [1], "decoder.name": "FCNDecoder"})))
    assert space.training.batch_size == (1,)


def test_technique_schema_comes_from_the_techniques_declaration(write_space):
    """Searched knobs take a list, fixed knobs one value, both checked by Techniques' own rules."""
    from em_backbones.techniques.config import searched_knobs, technique_knobs

    space = load_space(write_space(small_space(None, **{"techniques.lora_rank": [0, 8], "techniques.lora_alpha": 4})))
    assert list(space.techniques.choices) == searched_knobs() == ["quantization_bits", "lora_rank",
                                                                  "gradient_checkpointing"]
    assert set(space.techniques.fixed) | set(space.techniques.choices) == set(technique_knobs())
    sampled = space.techniques.of({"quantization_bits": 4, "lora_rank": 8, "gradient_checkpointing": True})
    assert (sampled.lora_rank, sampled.lora_alpha, sampled.quant_type) == (8, 4, "nf4")
    assert sampled.backbone_args()["backbone_lora_rank"] == 8


def test_planning_side_imports_no_model_stack():
    """The driver validates and plans without torch, TerraTorch or transformers (each costs seconds to import)."""
    import subprocess
    import sys

    probe = ("import sys, search.plan.space, search.data.tiles, search.outcome.results, search.outcome.summary, search.outcome.baselines, "
             "search.plan.terratorch_config, search.outcome.verdict; "
             "print(sorted(m for m in ('torch', 'terratorch', 'transformers', 'lightning', 'peft', 'bitsandbytes') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_packaged_space_names_its_validation_or_test_chips_or_leaves_out_a_backbone_of_its_tier():
    """Blind splits: the packaged spaces leave val/test to the stratified rule; the data-set spaces search every
    tier-2 backbone and the tier-0 U-Net on equal footing (none chosen by how it scored)."""
    from em_backbones.catalog import backbones_in_tier

    for path in sorted((REPO / "spaces").glob("*.yaml")):
        space = load_space(path)
        assert not space.data.val_chips and not space.data.test_chips and not space.data.test_fraction, path.name
        for tier, names in space.tiers.items():
            if path.name in ("flood.yaml", "tier2.yaml"):
                assert sorted(names) == sorted(backbones_in_tier(tier)), (path.name, tier)
    for name in ("flood.yaml", "tier2.yaml"):
        assert 0 in load_space(REPO / "spaces" / name).tiers
