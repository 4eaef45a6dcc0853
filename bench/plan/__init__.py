"""Plan: what to run. Suite files expanded into frozen, validated `Config`s, what this machine can run
(and why not the rest), how a configuration lays model and batch over its ranks, loss-parity
references, and the plan a run or tune directory is held to on resume.

May import: lmbench.measure, lmbench.models, lmbench.errors.
"""
