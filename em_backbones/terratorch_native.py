"""Tier-2 backbones: TerraTorch's own Prithvi, TerraMind and Clay, taking Sentinel-1 + Sentinel-2.

Each builder returns a module with TerraTorch's backbone contract — `forward` returns a list of
feature maps `[B, C, H/p, W/p]` and `out_channels` lists their widths — so any TerraTorch
decoder can sit on top without necks. Inputs arrive as a dict of modality tensors (what
TerraTorch's `GenericMultiModalDataModule` yields); Prithvi and Clay see them stacked as
channels, TerraMind keeps one token stream per modality, as it was designed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from terratorch.models.backbones.clay_v1.modules import Datacuber, EmbeddingEncoder
from terratorch.datasets.utils import HLSBands
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY

from em_backbones.bands import CLAY_BAND_NAMES, stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.registration import BackboneArgs, register_backbone

def evenly_spaced_layers(depth: int, count: int = 4) -> list[int]:
    """Indices of `count` layers spread over the depth, always ending at the last layer."""
    count = min(count, depth)
    return sorted({round((i + 1) * depth / count) - 1 for i in range(count)})


def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[B, L, D] patch tokens on a square grid → [B, D, sqrt(L), sqrt(L)]."""
    batch, length, dim = tokens.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"expected a square token grid, got {length} tokens")
    return tokens.transpose(1, 2).reshape(batch, dim, side, side)


def stack_modalities(x: dict[str, torch.Tensor] | torch.Tensor, modalities: list[str]) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    missing = [m for m in modalities if m not in x]
    if missing:
        raise KeyError(f"input lacks modalities {missing}; got {sorted(x)}")
    return torch.cat([x[m] for m in modalities], dim=1)


class S1S2Backbone(nn.Module):
    """Shared contract: modalities in, selected layers out as feature maps."""

    def __init__(self, modalities: list[str], out_indices: list[int], width: int, patch_size: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.out_indices = list(out_indices)
        self.out_channels = [width] * len(self.out_indices)
        self.patch_size = patch_size  # read by TerraTorch's factory to pad inputs

    lora_target_names = ("qkv", "proj", "fc1", "fc2")  # timm-style ViT blocks (Prithvi, TerraMind)

    def quantizable_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def checkpointed_modules(self) -> list[nn.Module]:
        """The transformer blocks, as quantized: each recomputes its activations in backward."""
        return self.quantizable_blocks()

    def new_parameters(self) -> list[nn.Parameter]:
        """Pretrained backbones add nothing new by default."""
        return []

    def select(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [maps[i] for i in self.out_indices]


# Prithvi was pretrained on six HLS bands; naming the matching Sentinel-2 bands the HLS way lets
# TerraTorch copy their patch-embedding weights from a Prithvi checkpoint (others start random).
PRITHVI_HLS_NAMES = {"B02": "BLUE", "B03": "GREEN", "B04": "RED", "B8A": "NIR_NARROW", "B11": "SWIR_1",
                     "B12": "SWIR_2"}


def _patch_embed_channels(ckpt_path: str) -> int | None:
    # mmap: only the shape is needed, so the weights are not read here (TerraTorch reads them next).
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    for key, value in state.items():
        if key.endswith("patch_embed.proj.weight"):
            return int(value.shape[1])
    return None


class PrithviS1S2(S1S2Backbone):
    """Prithvi ViT whose patch embedding takes every S1 and S2 band as a channel."""

    def __init__(self, args: BackboneArgs) -> None:
        spec = get_spec(args.name)
        ckpt_path, modalities = args.ckpt_path, args.modalities
        bands = [PRITHVI_HLS_NAMES.get(b, b) for b in stacked_band_names(modalities)]
        extra = {}
        if ckpt_path and _patch_embed_channels(ckpt_path) == len(bands):
            # A checkpoint of this very band layout (e.g. our own): match every band, as TerraTorch names them.
            extra["pretrained_bands"] = [HLSBands.try_convert_to_hls_bands_enum(b) for b in bands]
        vit = TERRATORCH_BACKBONE_REGISTRY.build(
            # TerraTorch's Prithvi reads ckpt_path only with pretrained=True; a path never downloads.
            spec.scales[args.scale]["terratorch_name"], pretrained=args.pretrained or bool(ckpt_path),
            ckpt_path=ckpt_path, bands=bands, img_size=args.img_size, num_frames=1, **extra,
        )
        depth = len(vit.blocks)
        super().__init__(modalities, args.out_indices or evenly_spaced_layers(depth), vit.embed_dim, spec.patch_size)
        self.vit = vit

    def quantizable_blocks(self) -> list[nn.Module]:
        return [self.vit.blocks]

    def new_parameters(self) -> list[nn.Parameter]:
        """The patch embedding is rebuilt for the S1+S2 bands, so it trains even under LoRA."""
        return list(self.vit.patch_embed.parameters())

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        tokens = self.vit(stack_modalities(x, self.modalities))
        return self.select(self.vit.prepare_features_for_image_model(tokens))


class TerraMindS1S2(S1S2Backbone):
    """TerraMind ViT with its own embedding per modality; tokens of S1 and S2 are mean-merged."""

    def __init__(self, args: BackboneArgs) -> None:
        spec = get_spec(args.name)
        vit = TERRATORCH_BACKBONE_REGISTRY.build(
            spec.scales[args.scale]["terratorch_name"], pretrained=args.pretrained, ckpt_path=args.ckpt_path,
            modalities=args.modalities, img_size=args.img_size,
        )
        depth = len(vit.encoder)
        width = vit.encoder_norm.normalized_shape[0]
        super().__init__(args.modalities, args.out_indices or evenly_spaced_layers(depth), width, spec.patch_size)
        self.vit = vit

    def quantizable_blocks(self) -> list[nn.Module]:
        return [self.vit.encoder]

    def forward(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        tokens = self.vit({m: x[m] for m in self.modalities})
        return self.select([tokens_to_map(t) for t in tokens])


class ClayS1S2(S1S2Backbone):
    """Clay v1 encoder; its dynamic patch embedding is generated from each band's wavelength.

    TerraTorch's `clay_v1_base` fixes the base width, so the encoder is built here from the
    scale's hyperparameters with TerraTorch's own Clay modules. Time and location encodings are
    zero (unknown for these chips); ground sampling distance is Sentinel's 10 m.
    """

    def __init__(self, args: BackboneArgs) -> None:
        spec = get_spec(args.name)
        hp = spec.scales[args.scale]
        super().__init__(args.modalities, args.out_indices or evenly_spaced_layers(hp["depth"]), hp["dim"],
                         spec.patch_size)
        self.datacuber = Datacuber(bands=[CLAY_BAND_NAMES[b] for b in stacked_band_names(args.modalities)])
        self.encoder = EmbeddingEncoder(
            img_size=args.img_size, patch_size=spec.patch_size, dim=hp["dim"], depth=hp["depth"], heads=hp["heads"],
            dim_head=hp["dim_head"], mlp_ratio=hp["mlp_ratio"],
        )
        if args.ckpt_path:
            load_clay_encoder_weights(self.encoder, args.ckpt_path)

    lora_target_names = ("to_qkv", "to_out", "1", "3")  # attention; FeedForward's net[1], net[3]

    def quantizable_blocks(self) -> list[nn.Module]:
        return [self.encoder.transformer.layers]

    def checkpointed_modules(self) -> list[nn.Module]:
        """Each layer is a ModuleList [attention, feed-forward] without a forward: its two halves."""
        return [nn.ModuleList(sub for layer in self.encoder.transformer.layers for sub in layer)]

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        pixels = stack_modalities(x, self.modalities)
        batch = pixels.shape[0]
        zeros = pixels.new_zeros(batch, 4)
        cube = self.datacuber(x=pixels, time=zeros, latlon=zeros, gsd=pixels.new_tensor(10.0))
        layers = self.encoder(cube)
        return self.select([tokens_to_map(t[:, 1:, :]) for t in layers])


def load_clay_encoder_weights(encoder: nn.Module, ckpt_path: str) -> None:
    """Load a Clay Lightning checkpoint (`model.encoder.*` keys) or a bare encoder state dict."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    prefix = "model.encoder."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"{ckpt_path}: checkpoint lacks encoder weights {result.missing_keys[:5]}")


# Prithvi and TerraMind may download published weights through TerraTorch when asked to.
em_prithvi = register_backbone("em_prithvi", PrithviS1S2, local_weights_only=False)
em_terramind = register_backbone("em_terramind", TerraMindS1S2, local_weights_only=False)
em_clay = register_backbone("em_clay", ClayS1S2)
