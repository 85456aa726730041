"""Evaluation: metrics, inference helpers, robustness sweeps, reports and plots."""
