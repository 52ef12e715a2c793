"""Slurm support: a client for Slurm's commands (exq.slurm.client), run locally or on a login node."""
