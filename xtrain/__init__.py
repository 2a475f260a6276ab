"""xtrain: distributed batch training and segmentation of PXCT volumes.

The data flows one way through plain functions (ingest -> store -> sampler ->
train -> model.pt -> segment -> evaluate); Ray, Slurm and the CLI sit at the edges.
"""

__version__ = "0.1.0"
