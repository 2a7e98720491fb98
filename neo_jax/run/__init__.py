"""The only layer that reads a config: the schema, the stages of a run, NEO training, the
experiment, run directories, reloading a trained run and serving requests."""
