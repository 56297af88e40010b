"""The data layer: one reader per format and the built-in datasets, shared by training,
calibration, `bench --eval` and export's validation probes.

- `images`: the image-file rules (suffixes, listing a folder, "can PIL open it").
- `tables`: caption files, CSV/TSV and JSONL.
- `folders`: image folders and class folders (one sub-folder per class, optional train/ and val/).
- `shards`: WebDataset tar shards, streamed.
- `shapes`, `digits`: the built-in generators; `builtin`: their train / held-out / zero-shot splits.
- `spec`: a `--data` spec string -> the reader for it; `tasks`: held-out evaluation tasks.

numpy and Pillow only at import time: never torch (scikit-learn and braceexpand are imported
where they are needed). May import the base and `edgeclip.runtime`, nothing above.
"""
