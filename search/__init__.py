"""Ray Tune search over geospatial backbones and memory techniques, scored by accuracy per GB."""
