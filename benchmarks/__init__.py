"""zoo's benchmarks: the suite (``python -m benchmarks``) and the scripts it calls.

Every script in this folder also runs on its own (``python benchmarks/bench_midi.py``). The
peers of :mod:`benchmarks.peers` (transformers, x-transformers) are the ``bench`` extra
(``pip install -e ".[bench]"``); nothing in the test suite imports them.
"""
