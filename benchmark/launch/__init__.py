"""Grids of runs: planning the grid and running it inline (grid), on local processes or as
Slurm job arrays through submitit (submitit_launch), the submission records that `status`
reads (submissions) and the Slurm profiles (slurm_profiles).

May import: benchmark.train, benchmark.errors, methods, datasets. Never report, speed or
the CLI.
"""
