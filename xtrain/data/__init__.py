"""Data layer: TIFF readers, the Zarr store layout, ingest, the synthetic generator, samplers."""
