"""Inf-Streams-Eval (StreamingVLM's live-commentary benchmark) through this service.

``stream eval inf-streams --data DIR`` reads the dataset as published, streams every video
through the service, writes the answers in the published format (resumable), measures them
without a judge, and, with ``--against``, judges them pairwise through any OpenAI-compatible
endpoint for the published win rate. docs/evals.md tells the whole story. Modules, one job each:

- :mod:`.dataset`: the published files (metadata, score windows), with their quirks.
- :mod:`.answers`: the published output format, read and written.
- :mod:`.video`: a stretch of a video file as a live feed's frames.
- :mod:`.captioners`: one chunk as a stream, through a server or in process.
- :mod:`.runner`: the chunks of a run, run once each, merged.
- :mod:`.store`: the output folder, written atomically.
- :mod:`.metrics`, :mod:`.report`: judge-free measures, per video and overall.
- :mod:`.judge_client`, :mod:`.judge`: the chat endpoint; pairwise votes and the win rate.
- :mod:`.toy_dataset`: a tiny dataset in the published layout, from the toy world.
- :mod:`.backend`, :mod:`.cli`: where answers come from; the command.
"""
