"""Search-space YAML → a validated `Space` (search/plan/schema.py); a bad field is one line naming it.

Every field is checked on load; a bad file raises `SpaceError` whose one-line message names the
file, the field and what was expected. YAML is read with `yaml.safe_load` (search/inputs.py): a
space file can never construct Python objects. Imports no torch, TerraTorch or transformers: the
driver plans with it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from em_backbones.bands import MODALITY_BANDS
from em_backbones.catalog import CATALOG, SEARCHED_TIERS, did_you_mean
from em_backbones.techniques.config import PRECISION_BYTES, knob_default, technique_knobs
from search.data.spec import BAD_CHIP_POLICIES, LAYOUTS, DataSpec
from search.inputs import read_yaml
from search.plan.checker import FieldChecker, SpaceError
from search.plan.faults import FAULT_KINDS, Fault
from search.plan.schema import (
    OBJECTIVES,
    SCHEDULERS,
    DecoderSpec,
    EvaluationSpec,
    MemorySpec,
    ObjectiveSpec,
    ResourceSpec,
    Space,
    TechniqueSpace,
    TrainingSpec,
)

# Decoders whose pyramid pooling normalises a 1x1 map with BatchNorm: a batch of one cannot train.
BATCHNORM_POOLING_DECODERS = ("UperNetDecoder",)
PACKING = ("memory", "whole")

TOP_KEYS = {"name", "scale", "objective", "tiers", "techniques", "training", "decoder", "data", "resources",
            "evaluation", "faults", "weights", "base", "memory"}
FAULT_KEYS = {"trial", "kind", "epoch", "attempts"}


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; raise SpaceError (one line) on the first bad field."""
    raw = read_yaml(path, SpaceError, what="space file")
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "<space>") -> Space:
    c = FieldChecker(source)
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: expected a mapping with at least 'tiers', got {type(raw).__name__}")
    c.no_unknown(raw, TOP_KEYS)
    tiers = parse_tiers(c, raw.get("tiers"))
    training = parse_training(c, c.section(raw, "training", TrainingSpec.__dataclass_fields__))
    decoder = c.section(raw, "decoder", DecoderSpec.__dataclass_fields__)
    decoder_spec = DecoderSpec(name=str(decoder.get("name", DecoderSpec.name)),
                               channels=c.integer(decoder.get("channels", DecoderSpec.channels), "decoder.channels", 1))
    if decoder_spec.name in BATCHNORM_POOLING_DECODERS and 1 in training.batch_size:
        c.fail("training.batch_size", f"sizes >= 2 with decoder.name {decoder_spec.name} (its pyramid pooling "
               "normalises a 1x1 map with BatchNorm, which cannot train on a batch of one)", list(training.batch_size))
    data = parse_data(c, c.section(raw, "data", DataSpec.__dataclass_fields__), [n for t in tiers.values() for n in t])
    objective, floor = parse_objective(c, raw.get("objective", ObjectiveSpec.name))
    return Space(
        name=str(raw.get("name", Path(source).stem)),
        scale=c.one_of(raw.get("scale", "tiny"), "scale", ("tiny", "full")),
        objective=objective,
        min_val_miou=floor,
        memory=parse_memory(c, c.section(raw, "memory", MemorySpec.__dataclass_fields__)),
        tiers=tiers,
        techniques=parse_techniques(c, c.section(raw, "techniques", technique_knobs())),
        training=training,
        decoder=decoder_spec,
        evaluation=parse_evaluation(c, c.section(raw, "evaluation", EvaluationSpec.__dataclass_fields__)),
        data=data,
        resources=parse_resources(c, c.section(raw, "resources", ResourceSpec.__dataclass_fields__)),
        faults=parse_faults(c, raw.get("faults", []), training.epochs),
        weights=parse_weights(c, raw.get("weights") or {}, tiers),
        base=parse_base(c, raw.get("base")),
        source=source,
    )


def parse_base(c: FieldChecker, raw: Any) -> str | None:
    """A TerraTorch config file (read when the run starts: search/data/base_config.py); relative to the working directory."""
    if raw is None:
        return None
    if not isinstance(raw, str):  # read (and its existence checked) where the run starts: search/data/base_config.py
        c.fail("base", "the path of a TerraTorch config file (the one `terratorch fit -c` trains)", raw)
    return raw


def parse_weights(c: FieldChecker, raw: Any, tiers: dict[int, tuple[str, ...]]) -> dict[str, str]:
    """backbone → a local Hugging Face `save_pretrained` directory (InternVL, EarthMind, Granite) or a
    TerraTorch checkpoint file (tier 2); never a download."""
    if not isinstance(raw, dict):
        c.fail("weights", "a mapping of backbone name → local weights path", raw)
    searched = [name for names in tiers.values() for name in names]
    for name, path in raw.items():
        if name not in searched:
            c.fail(f"weights.{name}", f"a backbone the space searches ({', '.join(searched)})", name)
        if not isinstance(path, str) or not Path(path).expanduser().exists():
            c.fail(f"weights.{name}", "an existing local path (a save_pretrained directory or a checkpoint file)",
                   path)
    return {name: str(Path(path).expanduser().resolve()) for name, path in raw.items()}


def parse_tiers(c: FieldChecker, raw: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        c.fail("tiers", "a non-empty mapping of tier number → list of backbone names", raw)
    tiers: dict[int, tuple[str, ...]] = {}
    for tier, names in raw.items():
        if tier not in SEARCHED_TIERS:
            c.fail(f"tiers.{tier}", "tier 0 (the reference CNN), 1, 2 or 3", tier)
        if not isinstance(names, list) or not names:
            c.fail(f"tiers.{tier}", "a non-empty list of backbone names", names)
        for name in names:
            if name not in CATALOG:
                raise SpaceError(f"{c.source}: field 'tiers.{tier}': unknown backbone {name!r}"
                                 f"{did_you_mean(name, CATALOG)}; "
                                 f"known: {', '.join(sorted(CATALOG))}")
            if CATALOG[name].tier != tier:
                c.fail(f"tiers.{tier}", f"backbones of tier {tier} ({name} is tier {CATALOG[name].tier})", name)
        tiers[tier] = tuple(names)
    return tiers


def parse_techniques(c: FieldChecker, raw: dict) -> TechniqueSpace:
    """Searched knobs: a list of choices (or one value); fixed knobs: one value. Checks come from Techniques."""
    choices, fixed = {}, {}
    for name, spec in technique_knobs().items():
        path = f"techniques.{name}"

        def check(value: Any, where: str, spec=spec) -> Any:
            if not spec.valid(value):
                c.fail(where, spec.expected, value)
            return value

        if spec.searched:
            choices[name] = c.choices(raw.get(name, [knob_default(name)]), path, check)
        else:
            fixed[name] = check(raw.get(name, knob_default(name)), path)
    return TechniqueSpace(choices, fixed)


def parse_training(c: FieldChecker, raw: dict) -> TrainingSpec:
    lr = raw.get("learning_rate", {"low": 1e-4, "high": 3e-3})
    if not isinstance(lr, dict) or set(lr) != {"low", "high"}:
        c.fail("training.learning_rate", "a mapping {low: L, high: H} (sampled log-uniformly)", lr)
    low = c.number(lr["low"], "training.learning_rate.low", 0.0, strictly=True)
    high = c.number(lr["high"], "training.learning_rate.high", low)
    epochs = c.integer(raw.get("epochs", TrainingSpec.epochs), "training.epochs", 1)
    grace = c.integer(raw.get("grace_period", TrainingSpec.grace_period), "training.grace_period", 1)
    if grace > epochs:
        c.fail("training.grace_period", f"an integer <= training.epochs ({epochs})", grace)
    precision = raw.get("precision", TrainingSpec.precision)
    if precision not in PRECISION_BYTES:
        c.fail("training.precision", f"one of {sorted(PRECISION_BYTES)} (Lightning precision)", precision)
    return TrainingSpec(
        learning_rate=(low, high),
        batch_size=c.choices(raw.get("batch_size", list(TrainingSpec.batch_size)), "training.batch_size",
                             lambda v, p: c.integer(v, p, 1)),
        epochs=epochs,
        grace_period=grace,
        reduction_factor=c.integer(raw.get("reduction_factor", TrainingSpec.reduction_factor),
                                   "training.reduction_factor", 2),
        num_samples=c.integer(raw.get("num_samples", TrainingSpec.num_samples), "training.num_samples", 1),
        seed=c.integer(raw.get("seed", TrainingSpec.seed), "training.seed", 0),
        precision=precision,
        scheduler=c.one_of(raw.get("scheduler", TrainingSpec.scheduler), "training.scheduler", SCHEDULERS),
    )


def parse_data(c: FieldChecker, raw: dict, backbones: list[str]) -> DataSpec:
    data = DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    c.one_of(data.layout, "data.layout", tuple(LAYOUTS))
    c.one_of(data.on_bad_chip, "data.on_bad_chip", BAD_CHIP_POLICIES)
    if data.root is not None and not isinstance(data.root, str):
        c.fail("data.root", "a directory path or null (packaged sample)", data.root)
    if not isinstance(data.modalities, tuple) or not data.modalities:
        c.fail("data.modalities", "a non-empty list of modalities", data.modalities)
    for i, modality in enumerate(data.modalities):
        if modality not in MODALITY_BANDS:
            c.fail(f"data.modalities[{i}]", f"one of {sorted(MODALITY_BANDS)}", modality)
    c.integer(data.num_classes, "data.num_classes", 2)
    c.integer(data.tile_size, "data.tile_size", 1)
    for key, low in (("val_fraction", 0.0), ("test_fraction", 0.0)):
        value = getattr(data, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < 1:
            c.fail(f"data.{key}", "a number in [0, 1)", value)
    for key in ("val_chips", "test_chips"):
        chips = getattr(data, key)
        if not isinstance(chips, tuple) or not all(isinstance(chip, str) for chip in chips):
            c.fail(f"data.{key}", "a list of chip ids", chips)
    both = sorted(set(data.val_chips) & set(data.test_chips))
    if both:
        c.fail("data.test_chips", f"chips not also in data.val_chips (a chip belongs to one split; {both[0]!r} "
               "is in both)", list(data.test_chips))
    for name in backbones:
        stride = CATALOG[name].patch_size
        if data.tile_size % stride:
            c.fail("data.tile_size", f"a multiple of {stride} ({name}'s patch stride)", data.tile_size)
        missing = [s for s in CATALOG[name].required_sensors if not any(m.startswith(s) for m in data.modalities)]
        if missing:
            c.fail("data.modalities", f"a modality of each of {list(CATALOG[name].required_sensors)} for {name} "
                   f"(missing {', '.join(missing)})", list(data.modalities))
    return data


def parse_resources(c: FieldChecker, raw: dict) -> ResourceSpec:
    resources = ResourceSpec(**raw)
    c.integer(resources.workers_per_trial, "resources.workers_per_trial", 1)
    c.number(resources.cpus_per_worker, "resources.cpus_per_worker", 0.0, strictly=True)
    if resources.gpus_per_worker is not None:
        c.number(resources.gpus_per_worker, "resources.gpus_per_worker", 0.0)
    if resources.max_concurrent_trials is not None:
        c.integer(resources.max_concurrent_trials, "resources.max_concurrent_trials", 1)
    if resources.memory_budget_gb is not None:
        c.number(resources.memory_budget_gb, "resources.memory_budget_gb", 0.0, strictly=True)
    c.integer(resources.max_failures, "resources.max_failures", 0)
    if resources.pack is not None:
        c.one_of(resources.pack, "resources.pack", PACKING)
    if resources.gpu_memory_gb is not None:
        c.number(resources.gpu_memory_gb, "resources.gpu_memory_gb", 0.0, strictly=True)
    return resources


def parse_evaluation(c: FieldChecker, raw: dict) -> EvaluationSpec:
    reference = raw.get("reference_cnn", EvaluationSpec.reference_cnn)
    if not isinstance(reference, bool):
        c.fail("evaluation.reference_cnn", "true or false", reference)
    folds = c.integer(raw.get("folds", EvaluationSpec.folds), "evaluation.folds", 0)
    if "top_k" in raw and c.integer(raw["top_k"], "evaluation.top_k", 0) == 0:
        folds = 0  # an earlier version's switch: top_k 0 turned the held-out stage off
    if folds == 1:
        c.fail("evaluation.folds", "0 (off) or at least 2 (every chip tested once, trained on the others)", folds)
    return EvaluationSpec(folds=folds, seeds=c.integer(raw.get("seeds", EvaluationSpec.seeds), "evaluation.seeds", 1),
                          reference_cnn=reference)


def parse_objective(c: FieldChecker, raw: Any) -> tuple[str, float | None]:
    """`objective: accuracy_per_gb` (or `pareto`), or `objective: {name: ..., min_val_miou: 0.8}`."""
    if not isinstance(raw, dict):
        return c.one_of(raw, "objective", OBJECTIVES), None
    c.no_unknown(raw, set(ObjectiveSpec.__dataclass_fields__), "objective.")
    floor = raw.get("min_val_miou")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1):
        c.fail("objective.min_val_miou", "a validation mIoU in [0, 1], or null (the best non-deep baseline's)", floor)
    return c.one_of(raw.get("name", ObjectiveSpec.name), "objective.name", OBJECTIVES), floor


def parse_memory(c: FieldChecker, raw: dict) -> MemorySpec:
    overhead = raw.get("overhead_gb", MemorySpec.overhead_gb)
    calibration = raw.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not Path(calibration).expanduser().is_file()):
        c.fail("memory.calibration", "the path of a calibration.json that `search calibrate` wrote", calibration)
    return MemorySpec(overhead_gb=c.number(overhead, "memory.overhead_gb", 0.0), calibration=calibration)


def parse_faults(c: FieldChecker, raw: Any, epochs: int) -> tuple[Fault, ...]:
    if not isinstance(raw, list):
        c.fail("faults", "a list of {trial, kind, epoch} entries", raw)
    faults = []
    for i, entry in enumerate(raw):
        path = f"faults[{i}]"
        if not isinstance(entry, dict):
            c.fail(path, "a mapping {trial: N, kind: raise|nan|oom, epoch: E}", entry)
        c.no_unknown(entry, FAULT_KEYS, prefix=f"{path}.")
        trial = c.integer(entry.get("trial"), f"{path}.trial", 0)
        kind = entry.get("kind")
        if kind not in FAULT_KINDS:
            c.fail(f"{path}.kind", f"one of {list(FAULT_KINDS)}", kind)
        epoch = c.integer(entry.get("epoch", 1), f"{path}.epoch", 1)
        if epoch > epochs:
            c.fail(f"{path}.epoch", f"an epoch the trial reaches (1..{epochs})", epoch)
        attempts = c.integer(entry.get("attempts", 1), f"{path}.attempts", 1)
        faults.append(Fault(trial, kind, epoch, attempts))
    if len({f.trial for f in faults}) != len(faults):
        c.fail("faults", "at most one fault per trial", [f.trial for f in faults])
    return tuple(faults)


def effective_space(space: Space, prepared) -> Space:
    """The space as a base config's trials run it: shapes from the datamodule, epochs and precision from
    the user's trainer (what ASHA's budget and the estimator must agree with)."""
    if prepared.base is None:
        return space
    trainer = prepared.base.get("trainer") or {}
    data = dataclasses.replace(space.data, modalities=tuple(prepared.modalities), tile_size=prepared.tile_size,
                               num_classes=prepared.num_classes)
    epochs = int(trainer.get("max_epochs") or space.training.epochs)
    # ASHA's grace period cannot pass the epochs the user's trainer runs (defect: a 1-epoch base config crashed).
    training = dataclasses.replace(space.training, epochs=epochs, grace_period=min(space.training.grace_period, epochs),
                                   precision=str(trainer.get("precision") or space.training.precision))
    model_args = prepared.base["model"]["init_args"]["model_args"]
    channels = model_args.get("decoder_channels")
    decoder = dataclasses.replace(space.decoder, name=model_args.get("decoder", space.decoder.name),
                                  channels=channels if isinstance(channels, int) else space.decoder.channels)
    return dataclasses.replace(space, data=data, training=training, decoder=decoder)
