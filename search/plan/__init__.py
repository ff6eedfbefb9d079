"""What to search: the space file's schema and validation, Optuna's define-by-run sampling, the trial's TerraTorch config."""
