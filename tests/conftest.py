"""Shared test settings: no progress lines (`neo_jax.catalog.progress`), in this process and in
the commands tests start (the variable is inherited), whatever the caller's environment says;
tests that check the lines turn them on themselves."""

import os

os.environ['NEO_PROGRESS'] = '0'
