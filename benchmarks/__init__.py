"""Benchmarks and inspection tools, outside the product packages: `python -m search bench ...` dispatches here.

Nothing in `search/` or `em_backbones/` imports this package; the CLI names its modules as strings.
"""
