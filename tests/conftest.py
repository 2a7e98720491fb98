"""Shared test settings: no progress lines (`neo_jax.catalog.progress`), in this process and in
the commands tests start (the variable is inherited)."""

import os

os.environ.setdefault('NEO_PROGRESS', '0')
