"""Method comparisons: per-case tables, paired statistics, Pareto fronts, forest plots and verdicts."""
