"""Search-space YAML → validated `Space`, and the define-by-run function Optuna samples from.

Every field is checked on load; a bad file raises `SpaceError` whose one-line message names the
file, the field and what was expected. YAML is read with `yaml.safe_load`: a space file can
never construct Python objects.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from em_backbones.bands import MODALITY_BANDS
from em_backbones.catalog import CATALOG
from em_backbones.estimate import PRECISION_BYTES, estimate
from em_backbones.quantization import QUANT_TYPES
from em_backbones.techniques import SUPPORTED_BITS, Techniques
from search.faults import FAULT_KINDS, Fault


class SpaceError(ValueError):
    """A space file that cannot be searched; the message is one line naming the field."""


@dataclass(frozen=True)
class DataSpec:
    root: str | None = None  # None: the packaged TerraMesh sample
    layout: str = "terramesh"
    modalities: tuple[str, ...] = ("S1RTC", "S2L2A")
    num_classes: int = 10
    tile_size: int = 112
    val_chips: tuple[str, ...] = ()
    test_chips: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceSpec:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 if the cluster has GPUs, else 0
    max_concurrent_trials: int | None = None  # None: as many as the cluster's resources hold
    memory_budget_gb: float | None = None  # per worker; configurations predicted over it never train
    max_failures: int = 2  # restarts of a trial's workers after a worker or node dies (Ray Train FailureConfig)


OBJECTIVES = ("accuracy_per_gb", "pareto")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class EvaluationSpec:
    """After the search: retrain the top-k configurations over several seeds, score them on test."""

    top_k: int = 3  # 0 = off
    seeds: int = 3


@dataclass(frozen=True)
class Space:
    name: str
    scale: str
    tiers: dict[int, tuple[str, ...]]
    quantization_bits: tuple[int, ...]
    lora_rank: tuple[int, ...]
    gradient_checkpointing: tuple[bool, ...]
    learning_rate: tuple[float, float]
    batch_size: tuple[int, ...]
    epochs: int
    grace_period: int
    reduction_factor: int
    num_samples: int
    seed: int
    decoder: str
    decoder_channels: int
    quant_type: str = "nf4"
    double_quant: bool = True
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    precision: str = "32-true"
    objective: str = "accuracy_per_gb"  # or "pareto": maximise val mIoU and minimise peak GB together
    scheduler: str = "asha"  # or "fifo": every trial runs all its epochs
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    faults: tuple[Fault, ...] = ()  # testing aid (search/faults.py); empty = off
    source: str = ""

    def fault_for(self, trial_number: int) -> Fault | None:
        return next((f for f in self.faults if f.trial == trial_number), None)


TOP_KEYS = {"name", "scale", "objective", "tiers", "techniques", "training", "decoder", "data", "resources",
            "evaluation", "faults"}
FAULT_KEYS = {"trial", "kind", "epoch"}
TECHNIQUE_KEYS = {"quantization_bits", "lora_rank", "gradient_checkpointing", "quant_type", "double_quant",
                  "lora_alpha", "lora_dropout"}
TRAINING_KEYS = {"learning_rate", "batch_size", "epochs", "grace_period", "reduction_factor", "num_samples", "seed",
                 "precision", "scheduler"}
EVALUATION_KEYS = set(EvaluationSpec.__dataclass_fields__)
DECODER_KEYS = {"name", "channels"}
DATA_KEYS = set(DataSpec.__dataclass_fields__)
RESOURCE_KEYS = set(ResourceSpec.__dataclass_fields__)


class _Checker:
    """Reads fields out of nested dicts, remembering the dotted path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: Any) -> None:
        raise SpaceError(f"{self.source}: field '{path}': expected {expected}, got {got!r}")

    def section(self, raw: dict, key: str, allowed: set[str], path: str = "") -> dict:
        value = raw.get(key, {})
        full = f"{path}{key}"
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(full, "a mapping", value)
        self.no_unknown(value, allowed, f"{full}.")
        return value

    def no_unknown(self, raw: dict, allowed: set[str], prefix: str = "") -> None:
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
                raise SpaceError(f"{self.source}: unknown field '{prefix}{key}'{hint}; "
                                 f"allowed: {', '.join(sorted(allowed))}")

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"an integer >= {minimum}", value)
        return value

    def number(self, value: Any, path: str, minimum: float, strictly: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < minimum or (strictly and value == minimum):
            self.fail(path, f"a number {'>' if strictly else '>='} {minimum}", value)
        return float(value)

    def choices(self, value: Any, path: str, check: Callable[[Any, str], Any]) -> tuple:
        values = value if isinstance(value, list) else [value]
        if not values:
            self.fail(path, "a non-empty list", value)
        return tuple(check(v, f"{path}[{i}]") for i, v in enumerate(values))


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; raise SpaceError (one line) on the first bad field."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: space file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(f"{path}: YAML syntax error{where}: {problem}") from None
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "<space>") -> Space:
    c = _Checker(source)
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: expected a mapping with at least 'tiers', got {type(raw).__name__}")
    c.no_unknown(raw, TOP_KEYS)

    scale = raw.get("scale", "tiny")
    if scale not in ("tiny", "full"):
        c.fail("scale", "'tiny' or 'full'", scale)
    objective = raw.get("objective", "accuracy_per_gb")
    if objective not in OBJECTIVES:
        c.fail("objective", " or ".join(repr(o) for o in OBJECTIVES), objective)

    tiers_raw = raw.get("tiers")
    if not isinstance(tiers_raw, dict) or not tiers_raw:
        c.fail("tiers", "a non-empty mapping of tier number → list of backbone names", tiers_raw)
    tiers: dict[int, tuple[str, ...]] = {}
    for tier, names in tiers_raw.items():
        if tier not in (1, 2, 3):
            c.fail(f"tiers.{tier}", "tier 1, 2 or 3", tier)
        if not isinstance(names, list) or not names:
            c.fail(f"tiers.{tier}", "a non-empty list of backbone names", names)
        for name in names:
            if name not in CATALOG:
                close = difflib.get_close_matches(str(name), sorted(CATALOG), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise SpaceError(f"{source}: field 'tiers.{tier}': unknown backbone {name!r}{hint}; "
                                 f"known: {', '.join(sorted(CATALOG))}")
            if CATALOG[name].tier != tier:
                c.fail(f"tiers.{tier}", f"backbones of tier {tier} ({name} is tier {CATALOG[name].tier})", name)
        tiers[tier] = tuple(names)

    tech = c.section(raw, "techniques", TECHNIQUE_KEYS)

    def bits(v, p):
        if v not in SUPPORTED_BITS or isinstance(v, bool):
            c.fail(p, f"one of {list(SUPPORTED_BITS)}", v)
        return v

    def flag(v, p):
        if not isinstance(v, bool):
            c.fail(p, "true or false", v)
        return v

    quant_type = tech.get("quant_type", "nf4")
    if quant_type not in QUANT_TYPES:
        c.fail("techniques.quant_type", f"one of {list(QUANT_TYPES)}", quant_type)
    double_quant = flag(tech.get("double_quant", True), "techniques.double_quant")
    lora_alpha = tech.get("lora_alpha")
    if lora_alpha is not None:
        c.number(lora_alpha, "techniques.lora_alpha", 0.0, strictly=True)
    lora_dropout = tech.get("lora_dropout", 0.0)
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0 <= lora_dropout < 1:
        c.fail("techniques.lora_dropout", "a number in [0, 1)", lora_dropout)

    training = c.section(raw, "training", TRAINING_KEYS)
    precision = training.get("precision", "32-true")
    if precision not in PRECISION_BYTES:
        c.fail("training.precision", f"one of {sorted(PRECISION_BYTES)} (Lightning precision)", precision)
    lr = training.get("learning_rate", {"low": 1e-4, "high": 3e-3})
    if not isinstance(lr, dict) or set(lr) != {"low", "high"}:
        c.fail("training.learning_rate", "a mapping {low: L, high: H} (sampled log-uniformly)", lr)
    low = c.number(lr["low"], "training.learning_rate.low", 0.0, strictly=True)
    high = c.number(lr["high"], "training.learning_rate.high", low)
    scheduler = training.get("scheduler", "asha")
    if scheduler not in SCHEDULERS:
        c.fail("training.scheduler", " or ".join(repr(o) for o in SCHEDULERS), scheduler)
    epochs = c.integer(training.get("epochs", 4), "training.epochs", 1)
    grace = c.integer(training.get("grace_period", 1), "training.grace_period", 1)
    if grace > epochs:
        c.fail("training.grace_period", f"an integer <= training.epochs ({epochs})", grace)

    decoder = c.section(raw, "decoder", DECODER_KEYS)
    data_raw = c.section(raw, "data", DATA_KEYS)
    data = DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_raw.items()})
    if data.layout not in ("terramesh", "sen1floods11"):
        c.fail("data.layout", "'terramesh' or 'sen1floods11'", data.layout)
    for i, modality in enumerate(data.modalities):
        if modality not in MODALITY_BANDS:
            c.fail(f"data.modalities[{i}]", f"one of {sorted(MODALITY_BANDS)}", modality)
    c.integer(data.num_classes, "data.num_classes", 2)
    c.integer(data.tile_size, "data.tile_size", 1)
    for name in (n for names in tiers.values() for n in names):
        stride = CATALOG[name].patch_size
        if data.tile_size % stride:
            c.fail("data.tile_size", f"a multiple of {stride} ({name}'s patch stride)", data.tile_size)
        missing = [s for s in CATALOG[name].required_sensors if not any(m.startswith(s) for m in data.modalities)]
        if missing:
            c.fail("data.modalities", f"a modality of each of {list(CATALOG[name].required_sensors)} for {name} "
                   f"(missing {', '.join(missing)})", list(data.modalities))
    if data.root is not None and not isinstance(data.root, str):
        c.fail("data.root", "a directory path or null (packaged sample)", data.root)

    res_raw = c.section(raw, "resources", RESOURCE_KEYS)
    resources = ResourceSpec(**res_raw)
    c.integer(resources.workers_per_trial, "resources.workers_per_trial", 1)
    c.number(resources.cpus_per_worker, "resources.cpus_per_worker", 0.0, strictly=True)
    if resources.gpus_per_worker is not None:
        c.number(resources.gpus_per_worker, "resources.gpus_per_worker", 0.0)
    if resources.max_concurrent_trials is not None:
        c.integer(resources.max_concurrent_trials, "resources.max_concurrent_trials", 1)
    if resources.memory_budget_gb is not None:
        c.number(resources.memory_budget_gb, "resources.memory_budget_gb", 0.0, strictly=True)
    c.integer(resources.max_failures, "resources.max_failures", 0)

    evaluation_raw = c.section(raw, "evaluation", EVALUATION_KEYS)
    evaluation = EvaluationSpec(
        top_k=c.integer(evaluation_raw.get("top_k", EvaluationSpec.top_k), "evaluation.top_k", 0),
        seeds=c.integer(evaluation_raw.get("seeds", EvaluationSpec.seeds), "evaluation.seeds", 1))

    faults = parse_faults(c, raw.get("faults", []), epochs)

    return Space(
        name=str(raw.get("name", Path(source).stem)),
        scale=scale,
        tiers=tiers,
        quantization_bits=c.choices(tech.get("quantization_bits", [16]), "techniques.quantization_bits", bits),
        lora_rank=c.choices(tech.get("lora_rank", [0]), "techniques.lora_rank",
                            lambda v, p: c.integer(v, p, 0)),
        gradient_checkpointing=c.choices(tech.get("gradient_checkpointing", [False]),
                                         "techniques.gradient_checkpointing", flag),
        learning_rate=(low, high),
        batch_size=c.choices(training.get("batch_size", [4]), "training.batch_size",
                             lambda v, p: c.integer(v, p, 1)),
        epochs=epochs,
        grace_period=grace,
        reduction_factor=c.integer(training.get("reduction_factor", 2), "training.reduction_factor", 2),
        num_samples=c.integer(training.get("num_samples", 8), "training.num_samples", 1),
        seed=c.integer(training.get("seed", 0), "training.seed", 0),
        decoder=str(decoder.get("name", "UperNetDecoder")),
        decoder_channels=c.integer(decoder.get("channels", 64), "decoder.channels", 1),
        quant_type=quant_type,
        double_quant=double_quant,
        lora_alpha=None if lora_alpha is None else float(lora_alpha),
        lora_dropout=float(lora_dropout),
        precision=precision,
        objective=objective,
        scheduler=scheduler,
        evaluation=evaluation,
        data=data,
        resources=resources,
        faults=faults,
        source=source,
    )


def parse_faults(c: _Checker, raw: Any, epochs: int) -> tuple[Fault, ...]:
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
        faults.append(Fault(trial, kind, epoch))
    if len({f.trial for f in faults}) != len(faults):
        c.fail("faults", "at most one fault per trial", [f.trial for f in faults])
    return tuple(faults)


def backbone_param(tier: int) -> str:
    """Optuna needs one parameter per tier: a categorical's choices may not change between trials."""
    return f"backbone_tier{tier}"


def trial_techniques(space: Space, params: dict[str, Any]) -> Techniques:
    """The memory techniques of one sampled configuration, with the space's fixed settings."""
    return Techniques(int(params["quantization_bits"]), space.quant_type, space.double_quant,
                      int(params["lora_rank"]), space.lora_alpha, space.lora_dropout,
                      bool(params["gradient_checkpointing"]))


def predicted_peak_gb(space: Space, backbone: str, params: dict[str, Any]) -> float:
    """The estimator's peak for one worker of this trial at the run's scale (backbone training step)."""
    peak = estimate(backbone, space.scale, trial_techniques(space, params), int(params["batch_size"]),
                    space.data.tile_size, space.precision, tuple(space.data.modalities)).peak
    return peak / 1e9


class DefineByRun:
    """What OptunaSearch calls per trial: tier first, then a backbone of that tier.

    With a memory budget, the predicted peak becomes an Optuna constraint (feasible when <= 0), so
    TPE learns which regions do not fit before any of them trains.

    A class rather than a closure so Ray Tune can pickle the searcher into its experiment
    checkpoint (needed to resume a search).
    """

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        space = self.space
        tier = trial.suggest_categorical("tier", sorted(space.tiers))
        backbone = trial.suggest_categorical(backbone_param(tier), list(space.tiers[tier]))
        trial.suggest_categorical("quantization_bits", list(space.quantization_bits))
        trial.suggest_categorical("lora_rank", list(space.lora_rank))
        trial.suggest_categorical("gradient_checkpointing", list(space.gradient_checkpointing))
        trial.suggest_float("learning_rate", *space.learning_rate, log=True)
        batch_size = trial.suggest_categorical("batch_size", list(space.batch_size))
        params = {name: trial.params[name] for name in ("quantization_bits", "lora_rank", "gradient_checkpointing")}
        predicted = predicted_peak_gb(space, backbone, {**params, "batch_size": batch_size})
        if space.resources.memory_budget_gb is not None:
            trial.set_constraint("predicted_gb_over_budget", predicted - space.resources.memory_budget_gb)
        return {"backbone": backbone, "predicted_gb": predicted, "trial_number": trial.number}


SEARCHED_PARAMS = ("tier", "backbone", "quantization_bits", "lora_rank", "gradient_checkpointing",
                   "learning_rate", "batch_size")
