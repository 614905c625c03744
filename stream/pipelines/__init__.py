"""Frame-level autoregressive pipelines: each turns a session's inputs into frames or captions."""
