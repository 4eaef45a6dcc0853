"""Measure: what takes or derives a measurement. Step timers, NVML telemetry, the environment and
platform, host memory, FLOPs and datasheet peaks, derived metrics and statistics, measured ceilings,
kernel microbenchmarks, the profiler-trace breakdown and the roofline. Pure functions, and measurement
objects that own their state.

May import: lmbench.models, lmbench.errors.
"""
