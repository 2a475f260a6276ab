"""xtrain's napari plugin (npe2 manifest ``napari.yaml``): a reader for xtrain stores and the "Label loop" widget.

    pip install -e '.[napari]'
    napari scan.zarr --plugin xtrain            # image, labels, probabilities, entropy (reader.py)
    # Plugins > Label loop (xtrain): segment, step through suggested planes, paint, save (widget.py)

``reader`` and ``loop`` import no Qt and no napari; ``widget`` is the Qt part.
"""
