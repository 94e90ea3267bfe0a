"""Deterministic, resumable batch iterators.

* :func:`pad_sequences` pads a list of ``[L_i, *F]`` tensors to ``[B, L_max, *F]``
  and returns ``lengths`` (``int64`` CPU tensor ``[B]``).
* :class:`BatchIterator` yields :class:`Batch` ``(inputs, lengths, targets)`` over a
  dataset, shuffled from ``(seed, epoch)``, optionally length-bucketed.
* :class:`StreamBatcher` is the contiguous char-LM batcher (Zaremba et al. / PTB,
  Cooijmans et al.): the id stream is cut into ``batch_size`` parallel streams
  and consecutive ``(input, target)`` chunks of ``seq_len`` steps are yielded, so
  the hidden state can be carried across batches.

Both iterators keep ``epoch`` and ``position`` (= number of batches of the
current epoch already yielded).  ``state_dict()`` / ``load_state_dict()`` (or the
``position`` / ``epoch`` constructor arguments) restart exactly: a fresh
iterator loaded with a saved state yields the identical remaining batches.
After an epoch is exhausted ``epoch`` is incremented and ``position`` reset to 0.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Protocol, Sequence

import torch

__all__ = ["pad_sequences", "Batch", "StreamBatch", "BatchIterator", "StreamBatcher"]


def pad_sequences(
    seqs: Sequence[torch.Tensor], pad_value: float = 0, batch_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``[L_i, *F]`` tensors -> ``([B, L_max, *F]`` (or ``[L_max, B, *F]``), ``lengths int64 [B])``."""
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64)
    t_max = int(lengths.max())
    out = seqs[0].new_full((len(seqs), t_max, *seqs[0].shape[1:]), pad_value)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return (out if batch_first else out.transpose(0, 1).contiguous()), lengths


class Batch(NamedTuple):
    inputs: torch.Tensor  # [B, T, ...] (padded)
    lengths: torch.Tensor  # int64 [B]
    targets: torch.Tensor  # [B] (or [B, T] for per-step tasks)


class StreamBatch(NamedTuple):
    inputs: torch.Tensor  # int64 [B, T] (or [T, B])
    targets: torch.Tensor  # int64, same shape, shifted by one step


class _Indexable(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Any: ...


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))


class BatchIterator:
    """Mini-batches ``Batch(inputs, lengths, targets)`` over ``dataset``.

    ``dataset`` needs ``__len__`` and either ``get_batch(idx) -> (x, lengths, y)``
    or ``__getitem__(i) -> (x_i, y_i)`` (then ``x_i`` are padded with 0).
    Order: a permutation drawn from ``(seed, epoch)`` if ``shuffle`` else index
    order.  ``bucket=k`` (length-bucketing): the permuted indices are cut into
    pools of ``k * batch_size``, each pool is sorted by length (stable) and cut
    into batches, then the batch order is shuffled (from ``(seed, epoch)``) --
    batches hold similar lengths, so little padding.
    """

    def __init__(
        self,
        dataset: _Indexable,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket: int | None = None,
        epoch: int = 0,
        position: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self.bucket = seed, drop_last, bucket
        self.epoch, self.position = epoch, position
        self._lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _get_lengths(self) -> torch.Tensor:
        if self._lengths is None:
            if hasattr(self.dataset, "lengths"):
                self._lengths = self.dataset.lengths()
            else:
                self._lengths = torch.tensor([len(self.dataset[i][0]) for i in range(len(self.dataset))])
        return self._lengths

    def batch_indices(self, epoch: int | None = None) -> list[torch.Tensor]:
        """The ``int64`` index tensors of all batches of ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        gen = _generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        bs = self.batch_size
        if self.bucket:
            lengths = self._get_lengths()
            pool = self.bucket * bs
            batches = []
            for start in range(0, n, pool):
                chunk = order[start : start + pool]
                chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
                batches.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
            if self.drop_last:
                batches = [b for b in batches if len(b) == bs][: len(self)]
            if self.shuffle:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
            return batches
        batches = [order[i : i + bs] for i in range(0, n, bs)]
        return batches[: len(self)]

    def _collate(self, idx: torch.Tensor) -> Batch:
        if hasattr(self.dataset, "get_batch"):
            return Batch(*self.dataset.get_batch(idx))
        items = [self.dataset[int(i)] for i in idx]
        x, lengths = pad_sequences([it[0] for it in items])
        ys = [torch.as_tensor(it[1]) for it in items]
        return Batch(x, lengths, torch.stack(ys))

    def __iter__(self) -> Iterator[Batch]:
        batches = self.batch_indices()
        for i in range(self.position, len(batches)):
            self.position = i + 1
            yield self._collate(batches[i])
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size, "n": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size or state.get("n", len(self.dataset)) != len(self.dataset):
            raise ValueError(f"state {state} does not match this iterator "
                             f"(batch_size={self.batch_size}, n={len(self.dataset)})")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state.get("seed", self.seed))


class StreamBatcher:
    """Contiguous LM batches from a 1-D id tensor.

    The first ``batch_size * L`` ids (``L = len(ids) // batch_size``) are reshaped
    to ``[batch_size, L]`` (stream ``b`` is the ``b``-th contiguous slice).  Batch
    ``k`` is ``inputs = streams[:, kT : kT+T]``, ``targets = streams[:, kT+1 : kT+T+1]``
    with ``T = seq_len``; there are ``ceil((L-1)/T)`` batches (the last may be
    shorter) or ``floor((L-1)/T)`` with ``drop_last=True``.  Shapes ``[B, T]``, or
    ``[T, B]`` with ``batch_first=False``.  The order is fixed, so the iterator is
    deterministic; ``position`` is the index of the next batch.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, drop_last: bool = False,
                 batch_first: bool = True, position: int = 0, epoch: int = 0):
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError("batch_size and seq_len must be positive")
        n_steps = ids.numel() // batch_size
        if n_steps < 2:
            raise ValueError(f"{ids.numel()} ids are too few for batch_size={batch_size}")
        self.streams = ids[: batch_size * n_steps].reshape(batch_size, n_steps)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.drop_last, self.batch_first = drop_last, batch_first
        self.n_tokens = ids.numel()
        self.position, self.epoch = position, epoch

    def __len__(self) -> int:
        usable = self.streams.shape[1] - 1
        return usable // self.seq_len if self.drop_last else -(-usable // self.seq_len)

    def batch(self, k: int) -> StreamBatch:
        """Batch number ``k`` (0-based) without changing the position."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range [0, {len(self)})")
        a = k * self.seq_len
        b = min(a + self.seq_len, self.streams.shape[1] - 1)
        x, y = self.streams[:, a:b], self.streams[:, a + 1 : b + 1]
        if not self.batch_first:
            x, y = x.t(), y.t()
        return StreamBatch(x.contiguous(), y.contiguous())

    def __iter__(self) -> Iterator[StreamBatch]:
        for k in range(self.position, len(self)):
            self.position = k + 1
            yield self.batch(k)
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "n_tokens": self.n_tokens}

    def load_state_dict(self, state: dict) -> None:
        for key in ("batch_size", "seq_len", "n_tokens"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]}, this batcher has {getattr(self, key)}")
        self.position, self.epoch = int(state["position"]), int(state.get("epoch", 0))
