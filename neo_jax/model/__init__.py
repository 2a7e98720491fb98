"""The NNX decoder (Llama family), presets, sharding rules, checkpoint import, vocabulary
extension and LoRA."""
