"""``stream bench``: the service's speed, each figure beside a baseline run in the same process.

Suites (``--suite``): ``generation`` (LongLive, Rolling Forcing), ``understanding``
(StreamingVLM), ``service`` (frames over WebSocket to N clients), ``kernels`` (paged attention),
``vae`` (streaming decode), ``cluster`` (N clients on 1 and 2+ Ray engine actors). A run writes
one JSON record (:mod:`evals.bench.record`) and a PNG per suite; :mod:`evals.report` turns the
records in ``evals/results/`` into BENCHMARKS.md.
"""
