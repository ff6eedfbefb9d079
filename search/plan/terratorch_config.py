"""One trial's parameters → a TerraTorch LightningCLI config (trainer, data, model, optimizer).

The trial trains from exactly this dict, and `best.yaml` is this dict written out, so what
`terratorch fit -c best.yaml` trains is what the search measured. The optimizer lives where
TerraTorch's tasks keep it (`model.init_args.optimizer`, `lr`, `optimizer_hparams`). The
`backbone_<knob>` keys come from `Techniques` itself. Light: the driver writes best.yaml with it.
"""

from __future__ import annotations

from typing import Any

from em_backbones import PLUGIN_DIR
from em_backbones.catalog import get_spec
from search.data.base_config import trial_config
from search.data.datamodule import datamodule_init_args
from search.data.tiles import IGNORE_INDEX, PreparedData
from search.plan.schema import Space

DATAMODULE_CLASS = "terratorch.datamodules.GenericMultiModalDataModule"
TASK_CLASS = "terratorch.tasks.SemanticSegmentationTask"


def backbone_model_args(space: Space, params: dict[str, Any], modalities: list[str], tile_size: int) -> dict[str, Any]:
    """The searched model part: the backbone and every `backbone_*` argument of TerraTorch's factory."""
    spec = get_spec(params["backbone"])
    return {
        "backbone": params["backbone"],
        "backbone_scale": space.scale,
        "backbone_modalities": list(modalities),
        "backbone_img_size": tile_size,
        "backbone_pretrained": params["backbone"] in space.weights,
        **({"backbone_ckpt_path": space.weights[params["backbone"]]} if params["backbone"] in space.weights else {}),
        **space.techniques.of(params).backbone_args(),
        **{f"backbone_{k}": v for k, v in spec.extra_args.items()},
    }


def model_init_args(space: Space, params: dict[str, Any], num_classes: int, modalities: list[str],
                    tile_size: int) -> dict[str, Any]:
    spec = get_spec(params["backbone"])
    epochs = space.training.epochs
    return {
        "model_factory": "EncoderDecoderFactory",
        "model_args": {
            **backbone_model_args(space, params, modalities, tile_size),
            "decoder": spec.decoder or space.decoder.name,
            **({} if spec.decoder else {"decoder_channels": space.decoder.channels}),
            "num_classes": num_classes,
        },
        "loss": "ce",
        "ignore_index": IGNORE_INDEX,
        "lr": float(params["learning_rate"]),
        "optimizer": "AdamW",
        "optimizer_hparams": {"weight_decay": 0.05},
        # Decay to ~0 over the trial's epochs: the last epoch's score (what ASHA compares and best.yaml
        # reproduces) is then the settled one, not a spike of a still-large step.
        "scheduler": "CosineAnnealingLR",
        "scheduler_hparams": {"T_max": epochs},
        "plot_on_val": False,
    }


def terratorch_config(space: Space, params: dict[str, Any], prepared: PreparedData) -> dict[str, Any]:
    """The complete LightningCLI config for one set of sampled parameters (and its seed, if it has one):
    the user's base config with the searched parts replaced, or one of this project's own."""
    seed, fold = params.get("seed"), params.get("fold")
    if prepared.base is not None:
        return trial_config(prepared.base, backbone_model_args(space, params, prepared.modalities, prepared.tile_size),
                            params["learning_rate"], params["batch_size"], seed, str(PLUGIN_DIR),
                            get_spec(params["backbone"]).decoder)
    return {
        "seed_everything": int(space.training.seed if seed is None else seed),
        "custom_modules_path": str(PLUGIN_DIR),
        "trainer": {
            "accelerator": "auto",
            "devices": "auto",
            "max_epochs": space.training.epochs,
            "precision": space.training.precision,
            "logger": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "gradient_clip_val": 1.0,
            # A held-out fold trains for its epochs and is scored once on its test chips: nothing to validate.
            **({"limit_val_batches": 0} if fold is not None else {}),
        },
        "data": {
            "class_path": DATAMODULE_CLASS,
            "init_args": datamodule_init_args(prepared, int(params["batch_size"]), fold),
        },
        "model": {
            "class_path": TASK_CLASS,
            "init_args": model_init_args(space, params, prepared.num_classes, prepared.modalities,
                                         space.data.tile_size),
        },
    }
