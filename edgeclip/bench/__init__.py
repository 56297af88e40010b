"""`edgeclip bench`: latency, size and accuracy per encoder x backend x precision x batch size,
with a torch baseline interleaved (`run.py`), robust statistics (`stats.py`), the machine header
(`machine.py`) and report outputs (`report.py`)."""
