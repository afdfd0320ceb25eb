"""Fixtures for tests and benchmarks: fake raw files in the real datasets' formats. Not a
data source a user prepares (those are in `msctr.data.sources`)."""
