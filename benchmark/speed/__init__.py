"""Measuring speed: the `speed` command (measure), the host-sync detector that it and the
tests run on every method's step (host_sync), a fake CREMA-D for GPU checks without the
release (fake_cremad), and gpu_check.sh, the one-script GPU check.

May import: benchmark.train, benchmark.errors, methods, datasets. Never launch, report or
the CLI.
"""
