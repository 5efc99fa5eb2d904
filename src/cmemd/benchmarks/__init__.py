"""Benchmarks: one module per benchmark (its constants, draws, protocol, options and registry entry)."""
