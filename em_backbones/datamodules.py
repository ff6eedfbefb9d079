"""TerraTorch's multimodal datamodule with loaders Lightning can shard across data-parallel workers.

TerraTorch's `GenericMultiModalDataModule` hands Lightning a `DataLoader(batch_sampler=BatchSampler(...))`.
Under DDP Lightning swaps the sampler for a `DistributedSampler` by re-creating the loader from its
init arguments, and a loader built from a batch sampler was created with the default `batch_size=1`:
every worker then trained on batches of one. A loader built from `batch_size` + `shuffle` is the form
Lightning's injection expects, so this subclass returns exactly that and changes nothing else
(datasets, transforms, normalisation on `on_after_batch_transfer` are TerraTorch's).

Multi-worker trials use it. An exported `best.yaml` keeps TerraTorch's own class (TerraTorch's CLI
imports `custom_modules_path` only after it has parsed class paths); to train it on several GPUs,
set `data.class_path: em_backbones.datamodules.ShardableMultiModalDataModule` with this project installed.
"""

from __future__ import annotations

from terratorch.datamodules import GenericMultiModalDataModule
from torch.utils.data import DataLoader


class ShardableMultiModalDataModule(GenericMultiModalDataModule):
    def _dataloader_factory(self, split: str) -> DataLoader:
        loader = super()._dataloader_factory(split)
        if self.sample_num_modalities:  # TerraTorch's modality-sampling batch sampler must stay
            return loader
        batches = loader.batch_sampler
        return DataLoader(
            dataset=loader.dataset,
            batch_size=batches.batch_size,
            shuffle=split == "train",
            drop_last=batches.drop_last,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
