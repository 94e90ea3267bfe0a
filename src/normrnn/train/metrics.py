"""Metrics accumulated over an evaluation pass: bits per character, accuracy, macro-F1, mean squared error.

Each accumulator takes batches and returns a flat ``dict[str, float]`` from ``result()``, so the trainer can log
any task's metrics the same way.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)


def bits_per_char(mean_nats: float) -> float:
    """Mean cross-entropy in nats per character -> bits per character."""
    return mean_nats / LN2


class LossMeter:
    """Sum of per-item losses and the item count (so the mean is over items, not over batches)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, loss_sum: float, count: int) -> None:
        self.total += float(loss_sum)
        self.count += int(count)

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


class CharLMMetrics:
    """Mean cross-entropy per character (``loss``, nats) and ``bpc``."""

    def __init__(self) -> None:
        self.loss = LossMeter()

    def add(self, nats_sum: float, chars: int) -> None:
        self.loss.add(nats_sum, chars)

    def result(self) -> dict[str, float]:
        return {"loss": self.loss.mean, "bpc": bits_per_char(self.loss.mean), "chars": float(self.loss.count)}


class ClassificationMetrics:
    """Loss, accuracy and macro-F1 (mean over the classes that occur in targets or predictions)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss = LossMeter()
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [target, predicted]

    def add(self, loss_sum: float, logits: Tensor, targets: Tensor) -> None:
        """logits: (N, C); targets: (N,) int64."""
        pred = logits.argmax(-1).cpu()
        t = targets.cpu()
        self.loss.add(loss_sum, t.numel())
        self.confusion += torch.bincount(t * self.num_classes + pred,
                                         minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def result(self) -> dict[str, float]:
        return {"loss": self.loss.mean, "accuracy": accuracy(self.confusion), "macro_f1": macro_f1(self.confusion)}


def accuracy(confusion: Tensor) -> float:
    total = int(confusion.sum())
    return float(confusion.diag().sum()) / total if total else 0.0


def macro_f1(confusion: Tensor) -> float:
    """Unweighted mean of per-class F1 over classes present in targets or predictions. confusion: (C, C)."""
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp / (predicted + actual).clamp(min=1)
    return float(f1[present].mean())


class RegressionMetrics:
    """Mean squared error (``loss`` = ``mse``)."""

    def __init__(self) -> None:
        self.loss = LossMeter()

    def add(self, sq_err_sum: float, count: int) -> None:
        self.loss.add(sq_err_sum, count)

    def result(self) -> dict[str, float]:
        return {"loss": self.loss.mean, "mse": self.loss.mean}


class CopyMetrics:
    """Copy problem: cross-entropy over all steps (``loss``) and accuracy on the steps to be recalled."""

    def __init__(self) -> None:
        self.loss = LossMeter()
        self.correct, self.count = 0, 0

    def add(self, loss_sum: float, steps: int, correct: int, recalled: int) -> None:
        self.loss.add(loss_sum, steps)
        self.correct += int(correct)
        self.count += int(recalled)

    def result(self) -> dict[str, float]:
        return {"loss": self.loss.mean, "accuracy": self.correct / max(self.count, 1)}
