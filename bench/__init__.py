"""Benchmarks of the trainer: speed against the reference trainer's figures, the GPU check, and learning."""
