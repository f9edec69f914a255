"""Two-stage training of MTRefSeg-R1: run configuration, data sources and the training loop."""
