"""Calibration sets for INT8 export: images from a folder, csv/tsv, WebDataset or builtin:shapes,
preprocessed once with the runtime's own preprocessing and cached as .npz by content hash
(`sources.py`, `cache.py`)."""
