"""The model: backbone + pooling + head, tasks, regularizers, optimizers and schedules."""
