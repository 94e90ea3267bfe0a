"""Benchmarks: tools that measure the library, apart from it (nothing in the library imports them).

=================  ==============================================================================================
``speed.py``       speed and memory of the layers against ``nn.LSTM``/``nn.GRU``/``nn.LSTMCell``
                   (``normrnn bench``, ``benchmarks/speed.py``): configurations, timing, memory in a subprocess
``report.py``      the machine a run measured, the Markdown table, files written atomically
``sync_cost.py``   what synchronised batch norm costs and buys at 2 ranks (claim C7,
                   ``python -m normrnn.bench.sync_cost``)
=================  ==============================================================================================

``benchmarks/`` at the top of the repository holds thin entry points (and the results); the logic is here.
"""
