"""Making it fast: the fused time loop behind ``backend="auto" | "fused"``.

One direction of one layer runs as a single autograd node around an *engine*'s time loop; what does not depend
on the previous state (the input term and its norm) stays outside it, vectorized over all steps. Where to look:

=====================  ==========================================================================================
``contract.py``        the engine contract: the interface every engine implements and the named tuples it
                       exchanges (loop arguments, results, the opaque ``saved``, gradients, streaming layers)
``select.py``          picking the path: the engine per device and dtype, fused or reference, why a variant is
                       unsupported, whether a call can take a one-call kernel
``run.py``             one direction of one layer: the input term, then one engine loop
``autograd.py``        the autograd glue: one node for every loop (``saved`` handed back unread), and the nodes
                       of the input term's native norms
``input_term.py``      the input term W_ih·x and its norm for all steps at once; the memory inference keeps
``loop_args.py``       from norm modules to engine arguments (kinds, gains, given statistics) and the running
                       averages after a call
``stream.py``          streaming: a whole LSTM stack's step in one call, from a plan of its cells' parameters
``torch_engine.py``    the PyTorch engine: the readable specification, the fallback (CUDA without Triton)
``native.py``          the native engine: building the C++ kernels (``csrc/``) and their adapter
``triton_engine.py``   the GPU engine: per step one GEMM and one fused Triton kernel (``triton_kernels.py``,
                       imported only where Triton is); the time loop captured as CUDA graphs (``cuda_graphs.py``)
=====================  ==========================================================================================

The names below are this package's face for the layers, tests and benchmarks.
Not covered (``auto`` uses the reference loop, ``fused`` raises): zoneout. Synchronised batch norm runs fused: the
engines all-reduce each step's sums through the loop's reducer (:mod:`.contract`).
"""
from . import native, torch_engine
from .input_term import release_scratch
from .native import set_pool_limit
from .run import run_direction
from .select import engine, engine_name, force_engine

__all__ = ["engine", "engine_name", "force_engine", "native", "release_scratch", "run_direction", "set_pool_limit",
           "torch_engine"]
