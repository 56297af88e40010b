"""Calibration sets for INT8 export: images from a folder, csv/tsv, WebDataset or builtin:shapes,
preprocessed once with the runtime's own preprocessing and cached as .npz by content hash
(`listing.py`, `cache.py`); every format is read by `edgeclip.data`."""
