"""The orchestrators: whole workflows built from the plain stages (no logic of their own beyond wiring).

``nightly`` (watch a folder: ingest, segment, QC, registry), ``compare`` (models, predictions and
baselines on the same labels, one report) and ``demo`` (the whole pipeline on synthetic data).
"""
