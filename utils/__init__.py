"""Library modules of the trainer, one job each (see the README's Contents table)."""
