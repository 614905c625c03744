"""Evaluations and benchmarks; they use stream/ and clients/, and write JSON."""
