"""What each task trains on and how it is scored: data, model, loss and evaluation behind one interface.

A :class:`Task` owns its datasets and builds the model; the trainer owns the loop. The trainer passes the model
(possibly wrapped, e.g. by DDP later) into :meth:`Task.loss` and :meth:`Task.evaluate` rather than the task
keeping it, so wrapping stays the trainer's business.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import CharLM, ConvRNN, SeqClassifier, detach_state
from .. import data as nd
from .batches import Batch, BatchPlan, minibatches, stream_plan
from .config import TrainConfig
from .metrics import CharLMMetrics, ClassificationMetrics, CopyMetrics, RegressionMetrics

# default split sizes of the generated tasks (examples)
SYNTHETIC_SIZES = {"train": 20_000, "valid": 1_000, "test": 1_000}


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Subset:
    """The first ``n`` examples of ``dataset`` in a fixed (seed 0) shuffled order, so a limit keeps every class
    even when a split is stored sorted by class."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset = dataset
        self.keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n]

    def __len__(self) -> int:
        return len(self.keep)

    def lengths(self) -> Tensor:
        return self.dataset.lengths()[self.keep]

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.dataset.get_batch(self.keep[idx])


class Reindexed:
    """A text split whose token ids pass through ``table`` (old id -> new id) when a batch is drawn."""

    def __init__(self, dataset: Any, table: Tensor) -> None:
        self.dataset, self.table = dataset, table

    def __len__(self) -> int:
        return len(self.dataset)

    def lengths(self) -> Tensor:
        return self.dataset.lengths()

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ids, lengths, labels = self.dataset.get_batch(idx)
        return self.table[ids], lengths, labels


def training_vocabulary(train: Any, vocab_size: int) -> Tensor:
    """old id -> new id over the tokens the (possibly limited) training split uses; every other token becomes
    ``<unk>`` (1) and ``<pad>`` stays 0. A limited split uses a fraction of the full split's vocabulary, and the
    embedding rows of words it never sees are never trained but cost every optimizer step (the WordNet glosses'
    51k words: 6.5M embedding parameters against the 128-unit LSTM's 0.2M, half of a classifier update's time)."""
    ids, _, _ = train.get_batch(torch.arange(len(train)))
    used = torch.unique(torch.cat([torch.tensor([0, 1]), ids.flatten()]))
    table = torch.ones(vocab_size, dtype=torch.int64)
    table[used] = torch.arange(len(used))
    return table


class Task:
    """Base: subclasses set ``metric`` (the valid number that is reported and tracked for "best"),
    ``higher_is_better`` and ``unit`` (what throughput counts), and implement the methods below."""

    metric = "loss"
    higher_is_better = False
    unit = "examples"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.info: dict[str, Any] = {}  # dataset sizes etc., written to summary.json

    def split_size(self, split: str, available: int) -> int:
        """How many examples/chars of ``split`` to use under ``limit``/``eval_limit``."""
        c = self.config
        cap = c.limit if split == "train" or c.eval_limit is None else c.eval_limit
        return available if cap is None else min(cap, available)

    # --- subclasses implement
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_plan(self, epoch: int) -> BatchPlan:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """Mean training loss of a batch (on the model's device) and how many ``unit`` it covered."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        raise NotImplementedError

    # --- state carried between batches (truncated BPTT); checkpointed with everything else
    def start_epoch(self, epoch: int) -> None:
        """Called before the first batch of every epoch (and when resuming mid-epoch, before load_carry)."""

    def carry_state(self) -> Any:
        return None

    def load_carry_state(self, state: Any, device: torch.device) -> None:
        pass


# ---------------------------------------------------------------------------------------------- char LM


class CharLMTask(Task):
    """Next-character prediction with truncated BPTT over ``batch_size`` parallel streams; metric: bpc."""

    metric, higher_is_better, unit = "bpc", False, "chars"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        corpus = nd.load_charlm(config.data_name, data_dir=config.data_dir)
        self.vocab = corpus.vocab
        self.splits = {s: getattr(corpus, s)[:self.split_size(s, len(getattr(corpus, s)))]
                       for s in ("train", "valid", "test")}
        if len(self.splits["train"]) <= config.batch_size * config.seq_len:
            raise ValueError(f"{corpus.name}: {len(self.splits['train'])} training characters are too few for "
                             f"one batch of {config.batch_size}x{config.seq_len}; lower --batch-size/--seq-len "
                             f"or raise --limit")
        self.carry: Optional[Any] = None
        self.info = {"dataset": corpus.name, "vocab": len(self.vocab),
                     **{f"{s}_chars": len(t) for s, t in self.splits.items()}}

    def build_model(self) -> nn.Module:
        c = self.config
        return CharLM(len(self.vocab), c.rnn_config(max_steps=c.seq_len), embed_dim=c.embed)

    def train_plan(self, epoch: int) -> BatchPlan:
        c = self.config
        return stream_plan(self.splits["train"], c.batch_size, c.seq_len, drop_last=True)

    def start_epoch(self, epoch: int) -> None:
        self.carry = None  # a new epoch starts the streams over: the last state belongs to the text's end

    def carry_state(self) -> Any:
        return self.carry

    def load_carry_state(self, state: Any, device: torch.device) -> None:
        self.carry = None if state is None else (
            state.to(device) if isinstance(state, Tensor) else tuple(s.to(device) for s in state))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits, state = model(batch["x"], self.carry)  # (B, T, V)
        self.carry = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten())
        return loss, batch["y"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        ids = self.splits[split]
        c = self.config
        # Fewer streams for a short split, so every stream holds at least one full chunk.
        streams = max(1, min(c.batch_size, len(ids) // (c.seq_len + 1)))
        meter, state = CharLMMetrics(), None
        device = next(model.parameters()).device
        if len(ids) // streams < 2:
            return meter.result()
        for batch in stream_plan(ids, streams, c.seq_len, drop_last=False):
            batch = to_device(batch, device)
            logits, state = model(batch["x"], state)
            meter.add(float(F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), reduction="sum")),
                      batch["y"].numel())
        return meter.result()


# ---------------------------------------------------------------------------------------------- classification


class ClassificationTask(Task):
    """Sequence classification: text (``classify``) or images as sequences (``image``); metrics: loss,
    accuracy, macro-F1."""

    metric, higher_is_better, unit = "accuracy", True, "examples"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        if config.task == "image":
            self._load_images()
        else:
            self._load_text()
        self.splits = {s: (d if self.split_size(s, len(d)) == len(d) else Subset(d, self.split_size(s, len(d))))
                       for s, d in self.splits.items()}
        if self.vocab_size and isinstance(self.splits["train"], Subset):
            table = training_vocabulary(self.splits["train"], self.vocab_size)
            self.splits = {s: Reindexed(d, table) for s, d in self.splits.items()}
            self.vocab_size = int(table.max()) + 1
            self.info["vocab"] = self.vocab_size
        self.info.update({f"{s}_examples": len(d) for s, d in self.splits.items()})

    def _load_images(self) -> None:
        c = self.config
        mode = "row" if c.image_mode == "cnn" else c.image_mode  # the CNN reads whole images: rows = the image
        try:
            data = nd.load_image_sequences(c.data_name, mode=mode, data_dir=c.data_dir)
        except ValueError as e:
            # A small IDX folder (a few thousand training images) cannot give the default 5,000 to validation:
            # hold out a tenth of its training images instead.
            found = re.search(r"number of training images (\d+)", str(e))
            if not found:
                raise
            data = nd.load_image_sequences(c.data_name, mode=mode, data_dir=c.data_dir,
                                           n_valid=max(1, int(found.group(1)) // 10))
        self.splits = {"train": data.train, "valid": data.valid, "test": data.test}
        self.num_classes, self.vocab_size = data.n_classes, None
        self.input_size, self.steps = data.train.x.shape[2], data.train.x.shape[1]
        self.info = {"dataset": data.name, "mode": c.image_mode, "classes": data.n_classes}

    def _load_text(self) -> None:
        c = self.config
        data = nd.load_text_classification(c.data_name, data_dir=c.data_dir, max_tokens=c.seq_len)
        self.splits = {"train": data.train, "valid": data.valid, "test": data.test}
        self.num_classes, self.vocab_size, self.input_size = data.n_classes, len(data.vocab), None
        self.steps = c.seq_len
        self.bucket = 50  # batch texts of similar length: the stack runs as many steps as the longest one
        self.info = {"dataset": data.name, "classes": data.n_classes, "vocab": len(data.vocab)}

    def build_model(self) -> nn.Module:
        c = self.config
        rnn = c.rnn_config(max_steps=self.steps)
        if c.task == "image" and c.image_mode == "cnn":
            return ConvRNN(self.num_classes, rnn)
        return SeqClassifier(self.num_classes, rnn, vocab_size=self.vocab_size, input_size=self.input_size,
                             embed_dim=c.embed, pool=c.pool)

    def train_plan(self, epoch: int) -> BatchPlan:
        c = self.config
        # Drop a last partial batch when it would be a single example: batch norm cannot train on one.
        drop = len(self.splits["train"]) % c.batch_size == 1
        return minibatches(self.splits["train"], c.batch_size, seed=c.seed, epoch=epoch, drop_last=drop,
                           bucket=getattr(self, "bucket", None))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits = model(batch["x"], batch["lengths"])
        return F.cross_entropy(logits, batch["y"]), batch["y"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        meter = ClassificationMetrics(self.num_classes)
        device = next(model.parameters()).device
        for batch in minibatches(self.splits[split], self.config.batch_size, shuffle=False):
            batch = to_device(batch, device)
            logits = model(batch["x"], batch["lengths"])
            meter.add(float(F.cross_entropy(logits, batch["y"], reduction="sum")), logits, batch["y"])
        return meter.result()


# ---------------------------------------------------------------------------------------------- synthetic


class SyntheticTask(Task):
    """Shared by the adding and copy problems (``normrnn.data``'s generators): fixed splits generated from
    (seed, split). ``limit`` sets the training set's size; valid/test keep at most their default size."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.splits = {}
        for k, split in enumerate(("train", "valid", "test")):
            n = (config.limit or SYNTHETIC_SIZES[split]) if split == "train" else \
                self.split_size(split, SYNTHETIC_SIZES[split])
            self.splits[split] = self.generate(n, seed=config.seed * 7919 + 1000 + k)
        self.info = {"dataset": "synthetic", "length": config.seq_len,
                     **{f"{s}_examples": len(d) for s, d in self.splits.items()}}

    def generate(self, n: int, seed: int) -> nd.SyntheticTask:
        raise NotImplementedError

    def train_plan(self, epoch: int) -> BatchPlan:
        c = self.config
        return minibatches(self.splits["train"], c.batch_size, seed=c.seed, epoch=epoch, drop_last=True)


class AddingTask(SyntheticTask):
    """The adding problem: regress the sum of the two marked values; metric: MSE (always guessing 1: 1/6).
    ``extra["min_len"]``: lengths vary uniformly in [min_len, seq_len]."""

    metric, higher_is_better, unit = "mse", False, "examples"

    def generate(self, n: int, seed: int) -> nd.SyntheticTask:
        return nd.adding_problem(n, self.config.seq_len, min_len=self.config.extra.get("min_len"), seed=seed)

    def build_model(self) -> nn.Module:
        c = self.config
        return SeqClassifier(1, c.rnn_config(max_steps=c.seq_len), input_size=2, pool="last")

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        return F.mse_loss(model(batch["x"], batch["lengths"]).squeeze(-1), batch["y"]), batch["y"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        meter = RegressionMetrics()
        device = next(model.parameters()).device
        for batch in minibatches(self.splits[split], 256, shuffle=False):
            batch = to_device(batch, device)
            err = model(batch["x"], batch["lengths"]).squeeze(-1) - batch["y"]
            meter.add(float(err.pow(2).sum()), err.numel())
        return meter.result()


class CopyTask(SyntheticTask):
    """The copy problem (``seq_len`` = the delay; ``extra``: ``copy_len`` 10, ``symbols`` 8, ``min_delay``);
    metrics: cross-entropy per step (baseline ``copy_len·ln(symbols)/T``) and accuracy on the recalled symbols."""

    metric, higher_is_better, unit = "accuracy", True, "examples"

    def __init__(self, config: TrainConfig) -> None:
        self.copy_len = int(config.extra.get("copy_len", 10))
        self.symbols = int(config.extra.get("symbols", 8))
        super().__init__(config)
        self.info["baseline_loss"] = self.copy_len * math.log(self.symbols) / (2 * self.copy_len + config.seq_len)

    def generate(self, n: int, seed: int) -> nd.SyntheticTask:
        return nd.copy_memory(n, self.config.seq_len, self.copy_len, self.symbols,
                              min_delay=self.config.extra.get("min_delay"), seed=seed)

    def build_model(self) -> nn.Module:
        c = self.config
        rnn = c.rnn_config(max_steps=2 * self.copy_len + c.seq_len)
        # inputs: blank, symbols, delimiter; outputs: blank or a symbol
        return CharLM(self.symbols + 2, rnn, embed_dim=c.embed or 16, num_outputs=self.symbols + 1)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits, _ = model(batch["x"], lengths=batch["lengths"])  # padded steps have target IGNORE_INDEX: left out of the loss
        return F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), ignore_index=nd.IGNORE_INDEX), \
            batch["y"].shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        meter = CopyMetrics()
        device = next(model.parameters()).device
        for batch in minibatches(self.splits[split], 256, shuffle=False):
            batch = to_device(batch, device)
            logits, _ = model(batch["x"], lengths=batch["lengths"])
            y, lengths = batch["y"], batch["lengths"]
            # the recalled symbols are each sequence's last copy_len steps
            pos = lengths.unsqueeze(1) - self.copy_len + torch.arange(self.copy_len, device=device)  # (N, K)
            recall = y.gather(1, pos)
            correct = (logits.argmax(-1).gather(1, pos) == recall).sum()
            valid = int((y != nd.IGNORE_INDEX).sum())
            meter.add(float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=nd.IGNORE_INDEX,
                                            reduction="sum")), valid, int(correct), recall.numel())
        return meter.result()


TASK_CLASSES = {"charlm": CharLMTask, "classify": ClassificationTask, "image": ClassificationTask,
                "adding": AddingTask, "copy": CopyTask}


def make_task(config: TrainConfig) -> Task:
    """Load the task's data. An unknown dataset or a missing path raises ValueError."""
    try:
        return TASK_CLASSES[config.task](config)
    except FileNotFoundError as e:  # a --data path that does not exist: one error type for every bad dataset
        raise ValueError(f"dataset {config.data_name!r} not found: {e}") from e
