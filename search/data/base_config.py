"""Bring your own TerraTorch config: search around a user's `terratorch fit` YAML.

A base config is a LightningCLI config TerraTorch already trains (`terratorch fit -c base.yaml`):
its datamodule, task settings (loss, ignore index, class weights, decoder, head) and trainer are
kept exactly. A trial replaces only what the space searches: the backbone and its `backbone_*`
arguments (techniques, scale, modalities and input size as the datamodule yields them), the
learning rate and the batch size. The winner is exported the same way, so `best.yaml` is the
user's config with those parts replaced.

Checks happen before a run directory exists and each fails in one line naming the key: the file
reads as a mapping with `data` and `model`; `data.class_path` imports; every data path the
datamodule names exists; the task builds its model with TerraTorch's `EncoderDecoderFactory`.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.inputs import read_yaml

FACTORY = "EncoderDecoderFactory"
PATH_KEY_PARTS = ("root", "split", "path", "file", "dir")  # datamodule arguments that name files or folders


class BaseConfigError(UserError, ValueError):
    """A base config the search cannot start from."""


def load_base(path: str | Path) -> dict[str, Any]:
    """The user's config, checked; raises BaseConfigError with one line naming file and key."""
    path = Path(path)
    config = read_yaml(path, BaseConfigError, prefix="base ")
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict) or not isinstance(
            config.get("model"), dict):
        raise BaseConfigError(f"base {path}: expected a LightningCLI fit config with 'data' and 'model' sections")
    check_importable(path, "data.class_path", config["data"].get("class_path"))
    check_importable(path, "model.class_path", config["model"].get("class_path"))
    model_args = config["model"].get("init_args", {}).get("model_args")
    factory = config["model"].get("init_args", {}).get("model_factory")
    if factory != FACTORY or not isinstance(model_args, dict):
        raise BaseConfigError(f"base {path}: model.init_args.model_factory: expected {FACTORY} with model_args "
                              f"(the backbone is what the search varies), got {factory!r}")
    if not isinstance(model_args.get("num_classes"), int):
        raise BaseConfigError(f"base {path}: model.init_args.model_args.num_classes: expected an integer")
    for key, value in data_paths(config["data"].get("init_args") or {}):
        if not Path(value).expanduser().exists():
            raise BaseConfigError(f"base {path}: data.init_args.{key}: {value} does not exist")
    return config


def class_of(class_path: str) -> type:
    """The class a LightningCLI `class_path` names."""
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def check_importable(path: Path, key: str, class_path: Any) -> None:
    if not isinstance(class_path, str) or "." not in class_path:
        raise BaseConfigError(f"base {path}: {key}: expected a dotted class path, got {class_path!r}")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        class_of(class_path)
    except ImportError as err:
        raise BaseConfigError(f"base {path}: {key}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise BaseConfigError(f"base {path}: {key}: {module_name} has no {class_name}") from None


def data_paths(init_args: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(key, path) of every datamodule argument that names a file or folder, nested mappings included."""
    found = []
    for key, value in init_args.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and any(part in str(key) for part in PATH_KEY_PARTS):
            found += [(f"{name}.{k}", v) for k, v in value.items() if isinstance(v, str)]
        elif isinstance(value, str) and any(part in str(key) for part in PATH_KEY_PARTS) and (
                "/" in value or value.startswith(".")):
            found.append((name, value))
    return found


def instantiate(node: Any) -> Any:
    """Build `{class_path, init_args}` the way LightningCLI does, nested ones (transforms, losses) included."""
    if isinstance(node, list):
        return [instantiate(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "class_path" not in node:
        return {key: instantiate(value) for key, value in node.items()}
    init_args = node.get("init_args") or {}
    return class_of(node["class_path"])(**{key: instantiate(value) for key, value in init_args.items()})


def trial_config(base: dict[str, Any], backbone_args: dict[str, Any], learning_rate: float, batch_size: int,
                 seed: int | None, custom_modules_path: str, own_decoder: str | None = None) -> dict[str, Any]:
    """The user's config with the searched parts replaced; nothing else changes. `own_decoder`: a backbone
    that brings its own decoder (the reference U-Net) replaces the user's decoder as well."""
    config = copy.deepcopy(base)
    model_args = config["model"]["init_args"]["model_args"]
    replaced = ("backbone", "decoder") if own_decoder else ("backbone",)
    for key in [k for k in model_args if k in replaced or k.startswith(tuple(f"{r}_" for r in replaced))]:
        del model_args[key]  # the user's backbone is what the search replaces
    model_args.update(backbone_args)
    if own_decoder:
        model_args["decoder"] = own_decoder
    config["model"]["init_args"]["lr"] = float(learning_rate)
    config["data"].setdefault("init_args", {})["batch_size"] = int(batch_size)
    if seed is not None:
        config["seed_everything"] = int(seed)
    # Where `terratorch fit` finds this project's backbones, unless the user's config already names a path.
    config.setdefault("custom_modules_path", custom_modules_path)
    return config


def with_absolute_data_paths(config: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """A trial trains in its own working directory: the datamodule's relative paths, made absolute."""
    config = copy.deepcopy(config)
    init_args = config["data"].setdefault("init_args", {})
    for key, value in data_paths(init_args):
        parent, _, leaf = key.rpartition(".")
        holder = init_args[parent] if parent else init_args
        holder[leaf] = str((Path(base_dir) / Path(value).expanduser()).resolve())
    return config
