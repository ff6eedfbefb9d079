"""The memory-technique knobs, declared once: the `Techniques` dataclass and what each field is.

Everything that names a knob is derived from the fields below (as transformers derives a model
from its configuration class): the space file's `techniques:` schema and defaults
(search/plan/space.py), the Optuna suggestions, the `backbone_<knob>` arguments TerraTorch passes to
a backbone (em_backbones/registry.py, search/plan/terratorch_config.py), the columns of
results.parquet and the report's axes. Adding a knob is a field here plus the code that applies
it (em_backbones/techniques/apply.py), and the estimator if it changes memory.

This module imports no torch: the planning side validates spaces with it.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

SUPPORTED_BITS = (4, 8, 16)
QUANT_TYPES = ("nf4", "fp4")
PRECISION_BYTES = {"32-true": 4, "bf16-true": 2, "16-true": 2}  # Lightning precision → bytes per element


def _one_of(options: tuple) -> Callable[[Any], bool]:
    return lambda v: any(v == o and type(v) is type(o) for o in options)  # True is not the bit width 1


def _int_at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _alpha(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


def _dropout(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


@dataclass(frozen=True)
class Knob:
    """How one technique field appears in a space file, in Optuna and in the results."""

    searched: bool  # a list of choices Optuna samples from; else one fixed value for the whole run
    expected: str  # what a valid value is, for one-line errors
    valid: Callable[[Any], bool]
    column: str  # pyarrow type name of its results.parquet column: "int64", "bool_", "string", "float64"
    label: str  # report axis title
    short: str = ""  # heading of its column in the printed trial table (searched knobs)


def knob(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"knob": Knob(**spec)})


@dataclass(frozen=True)
class Techniques:
    """The memory settings of one backbone; every default is off."""

    quantization_bits: int = knob(16, searched=True, expected=f"one of {list(SUPPORTED_BITS)}",
                                  valid=_one_of(SUPPORTED_BITS), column="int64", label="quantization bits",
                                  short="bits")
    quant_type: str = knob("nf4", searched=False, expected=f"one of {list(QUANT_TYPES)}", valid=_one_of(QUANT_TYPES),
                           column="string", label="4-bit format")
    double_quant: bool = knob(True, searched=False, expected="true or false", valid=_is_bool, column="bool_",
                              label="double quantization")
    lora_rank: int = knob(0, searched=True, expected="an integer >= 0 (0 = off)", valid=_int_at_least(0),
                          column="int64", label="LoRA rank", short="lora")
    lora_alpha: float | None = knob(None, searched=False, expected="a number > 0 or null (2 x rank)", valid=_alpha,
                                    column="float64", label="LoRA alpha")
    lora_dropout: float = knob(0.0, searched=False, expected="a number in [0, 1)", valid=_dropout, column="float64",
                               label="LoRA dropout")
    gradient_checkpointing: bool = knob(False, searched=True, expected="true or false", valid=_is_bool,
                                        column="bool_", label="gradient checkpointing", short="ckpt")

    def __post_init__(self) -> None:
        for name, spec in technique_knobs().items():
            value = getattr(self, name)
            if not spec.valid(value):
                raise ValueError(f"{name}: expected {spec.expected}, got {value!r}")

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def backbone_args(self) -> dict[str, Any]:
        """The `backbone_<knob>` keys of a TerraTorch model config."""
        return {f"backbone_{name}": getattr(self, name) for name in technique_knobs()}


def technique_knobs() -> dict[str, Knob]:
    """Every knob in declaration order."""
    return {f.name: f.metadata["knob"] for f in fields(Techniques)}


def searched_knobs() -> list[str]:
    return [name for name, spec in technique_knobs().items() if spec.searched]


def knob_default(name: str) -> Any:
    default = Techniques.__dataclass_fields__[name].default
    return None if default is MISSING else default


# The techniques by name, as `search memory --test` and `search calibrate` run them one by one.
NAMED_TECHNIQUES: dict[str, Techniques] = {
    "none": Techniques(),
    "8bit": Techniques(quantization_bits=8),
    "4bit": Techniques(quantization_bits=4),
    "lora": Techniques(lora_rank=16),
    "checkpointing": Techniques(gradient_checkpointing=True),
    "qlora": Techniques(quantization_bits=4, lora_rank=16),
    "qlora_ckpt": Techniques(quantization_bits=4, lora_rank=16, gradient_checkpointing=True),
}
