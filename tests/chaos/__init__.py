"""The chaos suite: `python -m tests.chaos.run` (make chaos); a short version is tests/test_chaos_short.py."""
