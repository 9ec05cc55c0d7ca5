"""A backbone with a linear head, trained by the loop with cross-entropy (pretrain)."""

from __future__ import annotations

from typing import Any

import torch

from .backbones import num_features
from .loop import Learner, optimizer_kwargs


class Classifier(torch.nn.Module, Learner):
    def __init__(self, backbone, num_classes: int, lr: float, weight_decay: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(num_features(backbone), num_classes)
        self.optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=weight_decay, **optimizer_kwargs())

    def forward(self, x):
        return self.head(self.backbone(x))

    def predict(self, x):
        return self(x)

    def update(self, minibatches: list[tuple[Any, Any]]) -> dict[str, float]:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.optimize(loss, self.optimizer)
        return {"loss": loss.detach()}
