"""Whether PyTorch is tracing the model for export (``torch.export``, ``torch.onnx.export(dynamo=True)``).

An exported graph can only hold ATen operations: the fused C++ kernels are opaque calls into memory that fake
tensors do not have, and reading a tensor's value into Python (``int(t)``) fixes it as a guard on data. While
exporting, the layers therefore run the reference loop, whose every step is plain ATen and whose result is the
same as the kernels' (the tests hold them together). ``torch.compile`` is not export: it keeps the kernels as
an eager call between its graphs.
"""
from __future__ import annotations

import torch


def is_exporting() -> bool:
    check = getattr(getattr(torch, "compiler", None), "is_exporting", None)  # (torch >= 2.5)
    return bool(check()) if check is not None else False
