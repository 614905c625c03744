"""Fidelity to the published loops: the same tiny random models, text embeddings and noise
through the published code (from checkouts the user names, never copied here) and ours, with
the differences per chunk, block and round (``stream eval fidelity``; docs/evals.md).

* :mod:`.longlive`: LongLive's interactive loop, through the window, a switch and its recache;
* :mod:`.rolling_forcing`: Rolling Forcing's rolling window, past the seventh clean pass;
* :mod:`.streaming_vlm`: StreamingVLM's kept tokens and positions after every eviction;
* :mod:`.published`, :mod:`.wan`: importing a checkout beside ours, and the shared tiny DiT.
"""
