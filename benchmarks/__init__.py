"""Benchmarks: engine, prompt assembly and bot overhead under load (results in docs/)."""
