"""Ray Tune sweeps and grid studies over the Ray Train trainer (see sweep.py, space.py)."""
