"""The ground every layer stands on: the run folder, data and splits, formatting, the
model-family differences (architecture), decoder-layer hooks, losses, representations."""
