"""Calibration sets for INT8 export (images preprocessed once with the runtime's own
preprocessing). Not implemented yet: tracked by the calibration/INT8 issue."""
