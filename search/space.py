"""Search-space YAML → validated `Space` (nested like the file), and the define-by-run function Optuna samples.

Every field is checked on load; a bad file raises `SpaceError` whose one-line message names the
file, the field and what was expected. YAML is read with `yaml.safe_load`: a space file can never
construct Python objects. The `techniques:` section is derived from `Techniques`
(em_backbones/techniques_config.py): a searched knob is a list of choices, a fixed one a value.

This module imports no torch, TerraTorch or transformers: the driver plans with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from em_backbones.bands import MODALITY_BANDS
from em_backbones.catalog import CATALOG, SEARCHED_TIERS, did_you_mean, get_spec
from em_backbones.techniques_config import PRECISION_BYTES, Techniques, knob_default, searched_knobs, \
    technique_knobs
from search.errors import UserError, read_yaml
from search.faults import FAULT_KINDS, Fault


class SpaceError(UserError, ValueError):
    """A space file that cannot be searched; the message is one line naming the field."""


LAYOUTS = ("terramesh", "sen1floods11")
BAD_CHIP_POLICIES = ("skip", "error")
OBJECTIVES = ("accuracy_per_gb", "pareto")
SCHEDULERS = ("asha", "fifo")
# Decoders whose pyramid pooling normalises a 1x1 map with BatchNorm: a batch of one cannot train.
BATCHNORM_POOLING_DECODERS = ("UperNetDecoder",)


@dataclass(frozen=True)
class DataSpec:
    root: str | None = None  # None: the packaged sample of the layout (search/sample_data/<layout>)
    layout: str = "terramesh"
    modalities: tuple[str, ...] = ("S1RTC", "S2L2A")
    num_classes: int = 10
    tile_size: int = 112
    val_chips: tuple[str, ...] = ()  # empty: chosen by seed, covering every class the data allows
    test_chips: tuple[str, ...] = ()
    val_fraction: float = 0.2  # share of usable chips chosen for validation (at least 1) when none are named
    test_fraction: float = 0.2
    on_bad_chip: str = "skip"  # skip (one warning line each) or error


@dataclass(frozen=True)
class ResourceSpec:
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 if the cluster has GPUs, else 0
    max_concurrent_trials: int | None = None  # None: as many as the cluster's resources hold
    memory_budget_gb: float | None = None  # per worker; configurations predicted over it never train
    max_failures: int = 2  # restarts of a trial after its worker or node dies


@dataclass(frozen=True)
class EvaluationSpec:
    """After the search: retrain the top-k configurations (and the reference CNN) over seeds, score on test."""

    top_k: int = 3  # 0 = off
    seeds: int = 3
    reference_cnn: bool = True  # train the tier-0 U-Net beside them, same budget and seeds


@dataclass(frozen=True)
class TrainingSpec:
    learning_rate: tuple[float, float] = (1e-4, 3e-3)  # sampled log-uniformly
    batch_size: tuple[int, ...] = (4,)
    epochs: int = 4
    grace_period: int = 1
    reduction_factor: int = 2
    num_samples: int = 8
    seed: int = 0
    precision: str = "32-true"
    scheduler: str = "asha"  # or "fifo": every trial runs all its epochs


@dataclass(frozen=True)
class DecoderSpec:
    name: str = "UperNetDecoder"
    channels: int = 64


@dataclass(frozen=True)
class TechniqueSpace:
    """Searched knobs as tuples of choices, fixed knobs as values (both keyed by Techniques' field names)."""

    choices: dict[str, tuple] = field(default_factory=lambda: {k: (knob_default(k),) for k in searched_knobs()})
    fixed: dict[str, Any] = field(default_factory=lambda: {k: knob_default(k) for k in technique_knobs()
                                                           if k not in searched_knobs()})

    def of(self, params: dict[str, Any]) -> Techniques:
        """The techniques of one sampled configuration: its searched values and the run's fixed ones."""
        return Techniques(**self.fixed, **{name: params[name] for name in self.choices})


@dataclass(frozen=True)
class Space:
    name: str
    scale: str
    tiers: dict[int, tuple[str, ...]]
    techniques: TechniqueSpace = field(default_factory=TechniqueSpace)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    objective: str = "accuracy_per_gb"  # or "pareto": maximise val mIoU and minimise peak GB together
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    data: DataSpec = field(default_factory=DataSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    faults: tuple[Fault, ...] = ()  # testing aid (search/faults.py); empty = off
    weights: dict[str, str] = field(default_factory=dict)  # backbone → local weights; the others: random init
    base: str | None = None  # a `terratorch fit` config to search around (search/base_config.py); None: `data`
    source: str = ""

    def fault_for(self, trial_number: int | None) -> Fault | None:
        return next((f for f in self.faults if f.trial == trial_number), None)

    @property
    def backbones(self) -> list[str]:
        return [name for names in self.tiers.values() for name in names]


TOP_KEYS = {"name", "scale", "objective", "tiers", "techniques", "training", "decoder", "data", "resources",
            "evaluation", "faults", "weights", "base"}
FAULT_KEYS = {"trial", "kind", "epoch"}


class _Checker:
    """Reads fields out of nested dicts, remembering the dotted path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, expected: str, got: Any) -> None:
        raise SpaceError(f"{self.source}: field '{path}': expected {expected}, got {got!r}")

    def section(self, raw: dict, key: str, allowed: set[str] | list[str]) -> dict:
        value = raw.get(key, {})
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(key, "a mapping", value)
        self.no_unknown(value, set(allowed), f"{key}.")
        return value

    def no_unknown(self, raw: dict, allowed: set[str], prefix: str = "") -> None:
        for key in raw:
            if key not in allowed:
                hint = did_you_mean(key, allowed, prefix)
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

    def one_of(self, value: Any, path: str, options: tuple[str, ...]) -> Any:
        if value not in options:
            self.fail(path, " or ".join(repr(o) for o in options), value)
        return value

    def choices(self, value: Any, path: str, check: Callable[[Any, str], Any]) -> tuple:
        values = value if isinstance(value, list) else [value]
        if not values:
            self.fail(path, "a non-empty list", value)
        return tuple(check(v, f"{path}[{i}]") for i, v in enumerate(values))


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; raise SpaceError (one line) on the first bad field."""
    raw = read_yaml(path, SpaceError, what="space file")
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "<space>") -> Space:
    c = _Checker(source)
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
    return Space(
        name=str(raw.get("name", Path(source).stem)),
        scale=c.one_of(raw.get("scale", "tiny"), "scale", ("tiny", "full")),
        objective=c.one_of(raw.get("objective", "accuracy_per_gb"), "objective", OBJECTIVES),
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


def parse_base(c: _Checker, raw: Any) -> str | None:
    """A TerraTorch config file (read when the run starts: search/base_config.py); relative to the working directory."""
    if raw is None:
        return None
    if not isinstance(raw, str):  # read (and its existence checked) where the run starts: search/base_config.py
        c.fail("base", "the path of a TerraTorch config file (the one `terratorch fit -c` trains)", raw)
    return raw


def parse_weights(c: _Checker, raw: Any, tiers: dict[int, tuple[str, ...]]) -> dict[str, str]:
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


def parse_tiers(c: _Checker, raw: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        c.fail("tiers", "a non-empty mapping of tier number → list of backbone names", raw)
    tiers: dict[int, tuple[str, ...]] = {}
    for tier, names in raw.items():
        if tier not in SEARCHED_TIERS:
            c.fail(f"tiers.{tier}", "tier 1, 2 or 3", tier)
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


def parse_techniques(c: _Checker, raw: dict) -> TechniqueSpace:
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


def parse_training(c: _Checker, raw: dict) -> TrainingSpec:
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


def parse_data(c: _Checker, raw: dict, backbones: list[str]) -> DataSpec:
    data = DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    c.one_of(data.layout, "data.layout", LAYOUTS)
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
    for key in ("val_fraction", "test_fraction"):
        value = getattr(data, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
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


def parse_resources(c: _Checker, raw: dict) -> ResourceSpec:
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
    return resources


def parse_evaluation(c: _Checker, raw: dict) -> EvaluationSpec:
    reference = raw.get("reference_cnn", EvaluationSpec.reference_cnn)
    if not isinstance(reference, bool):
        c.fail("evaluation.reference_cnn", "true or false", reference)
    return EvaluationSpec(top_k=c.integer(raw.get("top_k", EvaluationSpec.top_k), "evaluation.top_k", 0),
                          seeds=c.integer(raw.get("seeds", EvaluationSpec.seeds), "evaluation.seeds", 1),
                          reference_cnn=reference)


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


def predicted_peak_gb(space: Space, backbone: str, params: dict[str, Any]) -> float:
    """The estimator's peak for one worker of this trial at the run's scale, over the same modules the
    trial measures: backbone, decoder, head and loss (imports the model stack)."""
    from em_backbones.estimate import estimate
    from em_backbones.head_estimate import decoder_head_memory

    spec, batch, modalities = get_spec(backbone), int(params["batch_size"]), tuple(space.data.modalities)
    decoder_args = () if spec.decoder else (("decoder_channels", space.decoder.channels),)
    on_top = decoder_head_memory(backbone, space.scale, space.data.tile_size, modalities,
                                 spec.decoder or space.decoder.name, decoder_args, space.data.num_classes, batch,
                                 space.training.precision)
    predicted = estimate(backbone, space.scale, space.techniques.of(params), batch, space.data.tile_size,
                         space.training.precision, modalities).plus(on_top)
    return predicted.peak / 1e9


class DefineByRun:
    """What OptunaSearch calls per trial: tier first, then a backbone of that tier, then the knobs.

    With a memory budget, the predicted peak becomes an Optuna constraint (feasible when <= 0), so
    TPE learns which regions do not fit before any of them trains; that prediction needs the model
    stack in the driver, so without a budget each trial predicts its own peak where it trains.

    A class rather than a closure so Ray Tune can pickle the searcher into its experiment
    checkpoint (needed to resume a search).
    """

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        space = self.space
        tier = trial.suggest_categorical("tier", sorted(space.tiers))
        backbone = trial.suggest_categorical(backbone_param(tier), list(space.tiers[tier]))
        for name, options in space.techniques.choices.items():
            trial.suggest_categorical(name, list(options))
        trial.suggest_float("learning_rate", *space.training.learning_rate, log=True)
        trial.suggest_categorical("batch_size", list(space.training.batch_size))
        constants: dict[str, Any] = {"backbone": backbone, "trial_number": trial.number}
        if space.resources.memory_budget_gb is not None:
            predicted = predicted_peak_gb(space, backbone, trial.params)
            trial.set_constraint("predicted_gb_over_budget", predicted - space.resources.memory_budget_gb)
            constants["predicted_gb"] = predicted
        return constants


SEARCHED_PARAMS = ("tier", "backbone", *searched_knobs(), "learning_rate", "batch_size")
