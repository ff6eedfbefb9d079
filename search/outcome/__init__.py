"""What a run found: results table, statistics, baselines, verdicts, summary, exports, report (no Ray, no torch)."""
