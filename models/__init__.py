"""MTRefSeg-R1: networks, training and evaluation (installed as ``mtrs_geo.models``)."""
