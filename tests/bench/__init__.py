"""Benchmarks of Autopack Fleet against baselines measured in the same run (`make bench`)."""
