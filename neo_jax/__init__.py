"""neo_jax: an open JAX/Flax implementation of NEO (arXiv 2603.17533)."""
