"""Analyze: the results file and everything read from it. Records into a DataFrame, regression verdicts
and noise floors, the gate's outputs, tables, the report and its plots, speedup baselines.

May import: lmbench.plan, lmbench.measure, lmbench.models, lmbench.errors.
"""
