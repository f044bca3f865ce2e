"""The training loop on Megatron-Core: setup (model, optimizer, schedule), steps, metrics."""
