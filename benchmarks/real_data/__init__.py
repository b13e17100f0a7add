"""Helpers of ``benchmarks/real_data.py``: the source papers' tables on real labelled data."""
