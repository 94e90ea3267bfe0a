"""CUDA graphs for the Triton engine's time loops: capture a loop once per shape and flags, replay it after.

A time loop of T steps launches 2T kernels (GEMM + fused step), each costing the host a few microseconds: at
small sizes that is most of the time. :func:`run` captures a loop function (forward or backward, see
:mod:`normrnn.fused.triton_engine`) as a ``torch.cuda.CUDAGraph`` and replays it for every later call with the same
key.

* Key: the loop's name, its non-tensor arguments (flags, norm kinds, eps) and every tensor argument's shape,
  dtype and device. The parameters are tensor arguments like the input: each call copies *all* tensor
  arguments into the graph's static inputs, so a replayed graph never reads a stale tensor; replacing a
  parameter, or changing it in place, needs no invalidation (a new shape is a new key).
* Outputs: the graph's static outputs are copied out after each replay (views of one buffer stay views of one
  copy), because the next replay overwrites them while autograd may still hold the previous call's.
* Captured on the *second* call with a key (the first runs as plain launches): a shape seen once, as in a
  one-off evaluation or a test, costs no capture.
* Bounded: an LRU of :data:`MAX_GRAPHS` graphs (``NORMRNN_CUDA_GRAPHS_MAX``); each holds its own memory pool.
  ``NORMRNN_CUDA_GRAPHS=0`` turns capture off (every call then runs the loop as plain launches).
* Off for CPU tensors (Triton's interpreter in the tests) and inside an enclosing capture.

None of this can run without a CUDA device: it is exercised by ``tests/core/test_cuda.py`` (reuse, a new shape,
replaced parameters) on a GPU machine only. On the CPU, :func:`run` is a plain call, which the interpreter tests
cover; the flattening of arguments (:func:`flatten`, :func:`unflatten`) is tested there too.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor

MAX_GRAPHS = int(os.environ.get("NORMRNN_CUDA_GRAPHS_MAX", "8"))

_cache: "OrderedDict[tuple, _Graph]" = OrderedDict()
_seen: "OrderedDict[tuple, None]" = OrderedDict()  # keys called once, not captured yet (bounded as well)
_counts = {"hits": 0, "misses": 0, "evictions": 0, "eager": 0}


def enabled(device: torch.device) -> bool:
    return (device.type == "cuda" and os.environ.get("NORMRNN_CUDA_GRAPHS", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


# ------------------------------------------------------------------------------------------------ arguments


def flatten(x: Any, tensors: list) -> Any:
    """The structure of nested tuples (named tuples kept) with every tensor replaced by its index in ``tensors``
    (appended); hashable when the non-tensor leaves are."""
    if isinstance(x, Tensor):
        tensors.append(x)
        return ("T", len(tensors) - 1)
    if isinstance(x, tuple):
        return ("tuple", type(x), tuple(flatten(i, tensors) for i in x))
    return ("V", x)


def unflatten(spec: Any, tensors: list) -> Any:
    tag = spec[0]
    if tag == "T":
        return tensors[spec[1]]
    if tag == "tuple":
        items = [unflatten(s, tensors) for s in spec[2]]
        return spec[1]._make(items) if hasattr(spec[1], "_make") else spec[1](items)
    return spec[1]


def copy_out(tensors: list) -> list:
    """Copies of ``tensors``, where tensors sharing one storage come out as views of one copy of it (when one of
    them spans the storage; else each is copied)."""
    bases: dict = {}
    for t in tensors:
        st = t.untyped_storage()
        if t.storage_offset() == 0 and t.numel() * t.element_size() == st.nbytes() and t.is_contiguous():
            bases.setdefault(st.data_ptr(), t)
    copies, done = [], {}
    for t in tensors:
        base = bases.get(t.untyped_storage().data_ptr())
        if base is None or not t.numel():
            copies.append(t.clone())
            continue
        key = base.untyped_storage().data_ptr()
        if key not in done:
            done[key] = base.clone()
        copies.append(done[key].as_strided(t.shape, t.stride(), t.storage_offset()))
    return copies


# ------------------------------------------------------------------------------------------------ graphs


class _Graph:
    def __init__(self, fn: Callable, spec: Any, tensors: list):
        # static inputs: contiguous copies (an expanded gradient becomes a dense one)
        self.inputs = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
        args = unflatten(spec, self.inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up: compiles the kernels, creates cuBLAS handles
            fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            result = fn(*args)
        self.outputs: list = []
        self.out_spec = flatten(result, self.outputs)

    def __call__(self, tensors: list):
        for static, t in zip(self.inputs, tensors):
            static.copy_(t)
        self.graph.replay()
        return unflatten(self.out_spec, copy_out(self.outputs))


def run(name: str, fn: Callable, *args):
    """``fn(*args)``: on CUDA through a captured graph (captured on the first call with this key)."""
    tensors: list = []
    spec = flatten(args, tensors)
    if not tensors or not enabled(tensors[0].device) or MAX_GRAPHS <= 0:
        return fn(*args)
    key = (name, spec, tuple((tuple(t.shape), t.dtype, t.device) for t in tensors))
    graph = _cache.get(key)
    if graph is None and key not in _seen:
        _counts["eager"] += 1
        _seen[key] = None
        while len(_seen) > 4 * MAX_GRAPHS:
            _seen.popitem(last=False)
        return fn(*args)
    if graph is None:
        del _seen[key]
        _counts["misses"] += 1
        graph = _Graph(fn, spec, tensors)
        _cache[key] = graph
        while len(_cache) > MAX_GRAPHS:
            _cache.popitem(last=False)
            _counts["evictions"] += 1
    else:
        _counts["hits"] += 1
        _cache.move_to_end(key)
    return graph(tensors)


def cache_info() -> dict:
    """hits (replays), misses (captures), evictions, eager (first calls of a key, run without a graph) since the
    last :func:`clear`, and the graphs held."""
    return {**_counts, "size": len(_cache)}


def clear() -> None:
    _cache.clear()
    _seen.clear()
    for k in _counts:
        _counts[k] = 0
