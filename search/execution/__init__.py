"""Running the search: the `run` command's steps, Ray Tune's Tuner, trials, the held-out stage, the cluster."""
