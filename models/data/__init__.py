"""Datasets for training and evaluation: MTRefSeg-21K triplets, change folders, geo scenes."""
