"""The tier-0 reference: a small U-Net trained from scratch, the bar every foundation backbone must clear.

TerraTorch's own `UNet` backbone (its registry's convolutional encoder-decoder) over every S1/S2
band stacked as channels, built through the same `EncoderDecoderFactory` as the searched
backbones, with TerraTorch's `IdentityDecoder` (the U-Net brings its own decoder) and head. It has
no pretrained weights and no memory techniques: it answers "would a plain CNN have done as well?".
"""

from __future__ import annotations

import torch
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from em_backbones.activations import Architecture, unet_stage
from em_backbones.args import BackboneArgs
from em_backbones.bands import stacked_band_names
from em_backbones.catalog import get_spec
from em_backbones.contract import ContractDefaults
from em_backbones.families.feature_maps import stack_modalities
from em_backbones.registry import register_backbone


class UNetS1S2(ContractDefaults, nn.Module):
    """TerraTorch's UNet over the stacked bands; its feature maps come out finest last."""

    def __init__(self, args: BackboneArgs) -> None:
        super().__init__()
        hp = get_spec(args.name).scales[args.scale]
        self.name, self.scale = args.name, args.scale
        self.modalities = list(args.modalities)
        self.unet = TERRATORCH_BACKBONE_REGISTRY.build(
            "UNet", in_channels=len(stacked_band_names(self.modalities)), out_channels=hp["width"],
            num_stages=hp["stages"], strides=(1,) * hp["stages"], enc_num_convs=(2,) * hp["stages"],
            dec_num_convs=(2,) * (hp["stages"] - 1), downsamples=(True,) * (hp["stages"] - 1),
            enc_dilations=(1,) * hp["stages"], dec_dilations=(1,) * (hp["stages"] - 1))
        self.out_channels = self.unet.out_channels
        self.patch_size = get_spec(args.name).patch_size  # the total downsampling: inputs are padded to it

    def quantizable_blocks(self) -> list[nn.Module]:
        return []  # a reference: no techniques

    lora_target_names: tuple[str, ...] = ()

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def checkpointed_modules(self) -> list[nn.Module]:
        return []

    def memory_architecture(self, img_size: int, modalities: tuple[str, ...]) -> Architecture:
        """Every resolution's saved activations (em_backbones/activations.py: unet_stage); the decoder runs at all
        but the coarsest, the stacked input is kept by the first convolution."""
        hp = get_spec(self.name).scales[self.scale]
        stages, bands = hp["stages"], len(stacked_band_names(list(modalities)))
        layers = [unet_stage(pixels=(img_size // 2**i) ** 2, width=hp["width"] * 2**i,
                             below=hp["width"] * 2 ** (i - 1) if i else 0, encoder=True, decoder=i < stages - 1,
                             first_input=bands if i == 0 else 0) for i in range(stages)]
        return Architecture(layers)

    def forward(self, x: dict[str, torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        return self.unet(stack_modalities(x, self.modalities))


em_cnn = register_backbone("em_cnn", UNetS1S2)
