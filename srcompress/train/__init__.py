"""The training engine: data-parallel set-up, the loop, run folders and checkpoints, `distill()`."""
