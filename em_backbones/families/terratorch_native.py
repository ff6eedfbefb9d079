"""Tier-2 backbones: TerraTorch's own Prithvi, TerraMind and Clay, taking Sentinel-1 + Sentinel-2.

Each builder returns a module with TerraTorch's backbone contract — `forward` returns a list of
feature maps `[B, C, H/p, W/p]` and `out_channels` lists their widths — so any TerraTorch
decoder can sit on top without necks. Inputs arrive as a dict of modality tensors (what
TerraTorch's `GenericMultiModalDataModule` yields); Prithvi and Clay see them stacked as
channels, TerraMind keeps one token stream per modality, as it was designed.
"""

from __future__ import annotations

import torch
from terratorch.datasets.utils import HLSBands
from terratorch.models.backbones.clay_v1.modules import Datacuber, EmbeddingEncoder
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from em_backbones.activations import Architecture, vit_layer
from em_backbones.args import BackboneArgs
from em_backbones.bands import CLAY_BAND_NAMES, stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.contract import ContractDefaults
from em_backbones.families.feature_maps import evenly_spaced_layers, stack_modalities, tokens_to_map
from em_backbones.registry import register_backbone


class S1S2Backbone(ContractDefaults, nn.Module):
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

    def block_shape(self) -> tuple[int, int, int, int]:
        """(depth, width, MLP width, heads) of the transformer blocks, read off the first block's Linears."""
        blocks = self.quantizable_blocks()[0]
        linears = [m for m in blocks[0].modules() if type(m) is nn.Linear]
        width = linears[0].in_features
        mlp = max(m.out_features for m in linears if m.in_features == width and m.out_features != 3 * width)
        return len(blocks), width, mlp, self.heads()

    def heads(self) -> int:
        raise NotImplementedError

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

    def heads(self) -> int:
        return self.vit.blocks[0].attn.num_heads

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """One token stream of grid + 1 (CLS) tokens; the rebuilt patch embedding always trains."""
        depth, h, f, heads = self.block_shape()
        grid = (img_size // self.patch_size) ** 2
        bands = len(stacked_band_names(list(modalities)))
        return Architecture([vit_layer(depth, grid + 1, h, f, heads)],
                            outside_always=bands * img_size * img_size + (grid + 1) * h)

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

    def heads(self) -> int:
        return self.vit.encoder[0].attn.num_heads

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """One token stream per modality; the per-modality patch projections keep their inputs while they train."""
        depth, h, f, heads = self.block_shape()
        tokens = len(modalities) * (img_size // self.patch_size) ** 2
        bands = len(stacked_band_names(list(modalities)))
        return Architecture([vit_layer(depth, tokens, h, f, heads)], outside_always=tokens * h,
                            outside_trained=bands * img_size * img_size)

    def forward(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        tokens = self.vit({m: x[m] for m in self.modalities})
        return self.select([tokens_to_map(t) for t in tokens])


def cast_input_to_weight_dtype(layer: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the first input at the dtype of the module's parameters."""
    return (args[0].to(next(layer.parameters()).dtype), *args[1:])


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
        # Clay builds its wavelength and position encodings in fp32 whatever the model's dtype, which lifts
        # the tokens to fp32: cast them back where they enter, so bf16-true trains.
        for entry in (self.encoder.patch_embedding.fclayer, self.encoder.transformer):
            entry.register_forward_pre_hook(cast_input_to_weight_dtype)
        if args.ckpt_path:
            load_clay_encoder_weights(self.encoder, args.ckpt_path)

    lora_target_names = ("to_qkv", "to_out", "1", "3")  # attention; FeedForward's net[1], net[3]

    def quantizable_blocks(self) -> list[nn.Module]:
        return [self.encoder.transformer.layers]

    def checkpointed_modules(self) -> list[nn.Module]:
        """Each layer is a ModuleList [attention, feed-forward] without a forward: its two halves."""
        return [nn.ModuleList(sub for layer in self.encoder.transformer.layers for sub in layer)]

    def heads(self) -> int:
        return self.encoder.transformer.layers[0][0].heads

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """Grid + 1 tokens, two checkpointed halves per layer; the wavelength-conditioned patch embedding
        generates its weights once per batch (a constant term)."""
        depth, h, f, heads = self.block_shape()
        grid = (img_size // self.patch_size) ** 2
        bands = len(stacked_band_names(list(modalities)))
        embedding = self.encoder.patch_embedding
        generator = embedding.weight_generator
        generator_ff = generator.encoder.layers[0].linear1.out_features
        constant = 2 * (generator.num_latent_tokens + bands + 1) * generator_ff + embedding.output_dim * bands
        return Architecture([vit_layer(depth, grid + 1, h, f, heads, checkpoints=2)], outside_always=(grid + 1) * h,
                            outside_trained=bands * img_size * img_size, constant=constant)

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
