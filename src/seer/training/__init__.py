"""`seer train`: the config, the trainer and the data it pairs; writes a run folder."""
