"""A PyTorch Lightning script as users write it, no probe calls: ``Trainer.fit`` with a
validation loader (so a sanity check runs first), run unchanged under ``harness run``.

``--keep`` (or the stage being named ``planted``) plants a leak: the module keeps each training step's logits (16 x 1024 float32,
64 KiB a step; ~1.4 MiB an epoch of 22 steps) on the line marked ``# the leak``.
``--epochs N`` (3), ``--limit N``: ``limit_train_batches`` (none: all 22 batches).
"""

from __future__ import annotations

import argparse
import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

ap = argparse.ArgumentParser()
ap.add_argument("--keep", action="store_true")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--limit", type=int, default=None)
args = ap.parse_args()
keep = args.keep or os.environ.get("HARNESS_STAGE") == "planted"

BATCH, CLASSES, STEPS = 16, 1024, 22
torch.manual_seed(0)


class Classifier(pl.LightningModule):
    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, CLASSES))
        self.keep = keep
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        if self.keep:
            self.kept.append(logits.detach().clone())  # the leak
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def loader(n: int, shuffle: bool) -> DataLoader[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.randn(n * BATCH, 32), torch.randint(0, CLASSES, (n * BATCH,)))
    return DataLoader(data, batch_size=BATCH, shuffle=shuffle, num_workers=0)


trainer = pl.Trainer(max_epochs=args.epochs, limit_train_batches=args.limit, accelerator="cpu",
                     devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Classifier(keep), loader(STEPS, True), loader(4, False))
print("fit done", trainer.current_epoch)
