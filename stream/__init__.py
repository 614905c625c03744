"""The streaming service: sessions, engine, pipelines and the shared rolling KV-cache manager."""

__version__ = "0.1.0"
