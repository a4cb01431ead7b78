"""`make bench`: paired, interleaved speed ratios of hubft against hand-written baselines (see run.py)."""
