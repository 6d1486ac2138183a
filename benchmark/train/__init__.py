"""One run, from its resolved config to summary.json: settings and run ids (config), the
run's data and loaders (data), the training loop and evaluation (engine), metrics,
probes, contributions and cost, the code and data fingerprints, and the run store with
its locks (runstore, runlock).

May import: benchmark.errors, methods, datasets. Never launch, report, speed or the CLI.
"""
