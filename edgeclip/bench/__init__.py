"""Latency/accuracy benchmarking of bundles (`edgeclip bench`). Not implemented yet: tracked by
the bench issue."""
