"""Benchmarks: the shared result schema, the runner and the report (tables and plots)."""
