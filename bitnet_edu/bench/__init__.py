"""Benchmarks: ``python -m bitnet_edu.bench {kernels,decode,...}``.

Every figure is printed as a ratio against a baseline measured in the same run, because a
shared laptop (or CI box) is noisy; absolute times are printed too but are only context.
"""
