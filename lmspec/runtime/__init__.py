"""The runtime: data, tokenizers, objectives, training and RL loops, checkpoints."""
