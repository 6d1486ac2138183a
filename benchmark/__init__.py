"""The harness on top of `methods` and `datasets`, in parts by job:

- `benchmark.train`: one run, from its config to summary.json, and the run store;
- `benchmark.launch`: grids of runs, inline, local or on Slurm;
- `benchmark.report`: tables and figures from results/;
- `benchmark.speed`: the `speed` command and the host-sync check;
- `benchmark.cli` (with `__main__`): the command line, on top of them all;
- `benchmark.errors`: the user-error types every part raises;
- `benchmark.catalog`: what `list` prints, read from the sources without importing them.

Imports go down only: cli may import every part; launch, report and speed import train
(and errors) but not each other; train imports errors only; catalog imports nothing of
the project; methods and datasets never import benchmark. tests/test_layering.py walks
the imports and enforces it. See docs/design.md, "Layout".
"""
