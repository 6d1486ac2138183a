"""Reports from results/: the runs read into tidy frames (frames, imbalance), the tables
written from them (tables), the figures drawn from them (figures), the results blocks of
README.md and docs/ (readme), and the `report` command that does it all (build).

Frames are built in frames.py and drawn or rendered elsewhere: frames imports nothing of
this package, so tables and figures never import each other.

May import: benchmark.train, benchmark.errors, methods, datasets. Never launch, speed or
the CLI.
"""
