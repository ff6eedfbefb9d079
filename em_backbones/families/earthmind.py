"""EarthMind-v1 (arXiv 2506.01667) as a backbone: two-stream SAR/optical through one shared InternVL.

EarthMind builds on InternVL2.5-4B. SAR is fed as a second image through the *same* InternViT and
projector as the optical image. After the projector, the SAR and optical tokens at each position
are reweighted by a learned score — a small learned query scored against each token through a
bilinear form, squashed by a sigmoid — and the two reweighted token sets are concatenated before
the LLM. An MSE loss aligns SAR tokens with optical tokens. SAM2 (EarthMind's mask decoder) is left
out: a TerraTorch decoder takes its place.

As a backbone: the LLM's hidden states over the 2N visual tokens are split back into the SAR and
optical halves, and the two grids are concatenated along channels, so the decoder sees both streams.
The alignment loss enters training as published, without changing TerraTorch's task: the backbone
argument `alignment_weight` (default 1.0: the paper adds the alignment term to its objective, and
no other weight is given in the text we could read) makes backward give the loss the gradient it
would get as `alignment_weight * alignment_loss` in the total (`AddAuxiliaryLoss`, the device
mixture-of-experts code uses for auxiliary losses). The last forward's value stays in
`alignment_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from em_backbones.args import BackboneArgs
from em_backbones.bands import bands_of
from em_backbones.catalog import get_spec
from em_backbones.contract import parameters_on_meta
from em_backbones.families.feature_maps import drop_token_embedding, evenly_spaced_layers
from em_backbones.families.internvl import BandAdapter, InternVLBackbone, InternVLFamily, load_or_build_vlm
from em_backbones.registry import register_backbone

ALIGNMENT_WEIGHT = get_spec("earthmind_v1").extra_args["alignment_weight"]


class AddAuxiliaryLoss(torch.autograd.Function):
    """Returns `x` unchanged; backward also sends `weight` into `loss`, as if `weight * loss` were in the objective."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        ctx.save_for_backward(loss)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (loss,) = ctx.saved_tensors
        return grad, torch.full_like(loss, ctx.weight), None


class TokenReweighting(nn.Module):
    """score(t) = sigmoid(q^T W t) per token; a learned query q and bilinear map W, shared by both streams."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(width))
        self.bilinear = nn.Linear(width, width, bias=False)
        nn.init.normal_(self.query, std=width**-0.5)

    def forward(self, sar: torch.Tensor, optical: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = lambda t: torch.sigmoid(self.bilinear(t) @ self.query).unsqueeze(-1)  # noqa: E731
        return sar * score(sar), optical * score(optical)


class EarthMindBackbone(InternVLFamily, nn.Module):
    """TerraTorch backbone: {SAR, optical} → shared InternVL → reweight, concat → LLM → maps."""

    images = 2  # SAR and optical through one tower
    fusion_terms = 2.5  # token reweighting (bilinear in/out) and the alignment difference, per LLM token

    @classmethod
    def published_parameters(cls, name: str) -> int:
        """EarthMind as released: InternVL2.5-4B plus its fusion layers (reweighting, SAR adapter)."""
        return InternVLFamily.published_parameters("internvl2_4b") + parameters_on_meta(cls, name) \
            - parameters_on_meta(InternVLBackbone, "internvl2_4b")

    def __init__(self, args: BackboneArgs) -> None:
        super().__init__()
        sar = [m for m in args.modalities if m.startswith("S1")]
        optical = [m for m in args.modalities if m.startswith("S2")]
        if len(sar) != 1 or len(optical) != 1:
            raise ValueError(f"earthmind_v1 needs one Sentinel-1 and one Sentinel-2 modality, got {args.modalities}")
        self.sar_modality, self.optical_modality = sar[0], optical[0]
        self.vlm = load_or_build_vlm(args, "internvl2_4b")
        drop_token_embedding(self.vlm.language_model)
        width = self.vlm.config.text_config.hidden_size
        self.sar_adapter = BandAdapter(bands_of(self.sar_modality))  # SAR gets its own path into RGB space
        self.optical_adapter = BandAdapter(bands_of(self.optical_modality))
        self.reweight = TokenReweighting(width)
        depth = self.vlm.config.text_config.num_hidden_layers
        self.out_indices = args.out_indices or [k + 1 for k in evenly_spaced_layers(depth)]
        self.out_channels = [2 * width] * len(self.out_indices)
        self.patch_size = get_spec("earthmind_v1").patch_size
        self.alignment_loss = torch.zeros(())
        self.alignment_weight = float(args.extra.get("alignment_weight", ALIGNMENT_WEIGHT))

    def new_parameters(self) -> list[nn.Parameter]:
        """Adapters and reweighting are EarthMind's own fusion layers; they train under LoRA too."""
        return [*self.sar_adapter.parameters(), *self.optical_adapter.parameters(), *self.reweight.parameters()]

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vlm.get_image_features(
            pixel_values=pixels, vision_feature_layer=-1, vision_feature_select_strategy="default",
        ).pooler_output

    def forward(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        batch = x[self.sar_modality].shape[0]
        # One pass of the shared tower over both images, stacked along the batch.
        both = self._tokens(torch.cat([self.sar_adapter(x[self.sar_modality]),
                                       self.optical_adapter(x[self.optical_modality])]))
        sar, optical = both[:batch], both[batch:]
        self.alignment_loss = F.mse_loss(sar, optical)
        sar, optical = self.reweight(sar, optical)
        hidden = self.vlm.language_model(inputs_embeds=torch.cat([sar, optical], dim=1),
                                         output_hidden_states=True).hidden_states
        n = sar.shape[1]
        side = math.isqrt(n)

        def grid(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(batch, -1, side, side)

        maps = [torch.cat([grid(hidden[i][:, :n]), grid(hidden[i][:, n:])], dim=1) for i in self.out_indices]
        if self.training and torch.is_grad_enabled() and self.alignment_weight:
            maps[-1] = AddAuxiliaryLoss.apply(maps[-1], self.alignment_loss, self.alignment_weight)
        return maps


earthmind_v1 = register_backbone("earthmind_v1", EarthMindBackbone)
