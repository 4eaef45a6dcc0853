"""Run: configurations executed. The runner (one fresh worker process per configuration and repeat,
torchrun for the distributed modes), the worker, the training step with its precision, data and
parallelism (data, tensor and pipeline), the run directory and its lock, signal handling, and the
profiled window.

May import: lmbench.analyze (workers write the results file), lmbench.plan, lmbench.measure,
lmbench.models, lmbench.errors.
"""
