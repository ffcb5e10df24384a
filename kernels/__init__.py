"""Operators benchmarked by cgspn-bench: attention, original GSPN and C-GSPN at every level.

``kernels.registry`` is the catalogue; the operator packages register themselves in it.
"""
