"""Training: the learning-rate schedule, atomic checkpoints and the method-agnostic trainer."""
