"""One trial's parameters → a TerraTorch LightningCLI config (trainer, data, model, optimizer).

The trial trains from exactly this dict, and `best.yaml` is this dict written out, so what
`terratorch fit -c best.yaml` trains is what the search measured. The optimizer lives where
TerraTorch's tasks keep it (`model.init_args.optimizer`, `lr`, `optimizer_hparams`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import em_backbones
from search.data import IGNORE_INDEX, PreparedData, datamodule_init_args
from search.space import Space

EM_BACKBONES_DIR = Path(em_backbones.__file__).parent
DATAMODULE_CLASS = "terratorch.datamodules.GenericMultiModalDataModule"
TASK_CLASS = "terratorch.tasks.SemanticSegmentationTask"


def model_init_args(space: Space, params: dict[str, Any], num_classes: int, modalities: list[str],
                    tile_size: int) -> dict[str, Any]:
    return {
        "model_factory": "EncoderDecoderFactory",
        "model_args": {
            "backbone": params["backbone"],
            "backbone_scale": space.scale,
            "backbone_modalities": list(modalities),
            "backbone_img_size": tile_size,
            "backbone_pretrained": False,
            "backbone_quantization_bits": int(params["quantization_bits"]),
            "backbone_quant_type": space.quant_type,
            "backbone_double_quant": space.double_quant,
            "backbone_lora_rank": int(params["lora_rank"]),
            "backbone_lora_alpha": space.lora_alpha,
            "backbone_lora_dropout": space.lora_dropout,
            "backbone_gradient_checkpointing": bool(params["gradient_checkpointing"]),
            "decoder": space.decoder,
            "decoder_channels": space.decoder_channels,
            "num_classes": num_classes,
        },
        "loss": "ce",
        "ignore_index": IGNORE_INDEX,
        "lr": float(params["learning_rate"]),
        "optimizer": "AdamW",
        "optimizer_hparams": {"weight_decay": 0.05},
        "plot_on_val": False,
    }


def terratorch_config(space: Space, params: dict[str, Any], prepared: PreparedData) -> dict[str, Any]:
    """The complete LightningCLI config for one set of sampled parameters (and its seed, if it has one)."""
    seed = params.get("seed")
    return {
        "seed_everything": int(space.seed if seed is None else seed),
        "custom_modules_path": str(EM_BACKBONES_DIR),
        "trainer": {
            "accelerator": "auto",
            "devices": "auto",
            "max_epochs": space.epochs,
            "precision": space.precision,
            "logger": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
        },
        "data": {
            "class_path": DATAMODULE_CLASS,
            "init_args": datamodule_init_args(prepared, int(params["batch_size"])),
        },
        "model": {
            "class_path": TASK_CLASS,
            "init_args": model_init_args(space, params, prepared.num_classes, prepared.modalities,
                                         space.data.tile_size),
        },
    }
