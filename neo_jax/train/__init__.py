"""Packing, the sharded train step, the staged and resumable training loop, per-host data and
task mixtures."""
