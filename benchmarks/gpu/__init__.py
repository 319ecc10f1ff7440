"""The GPU benchmark and training run that one call of the lent device machine makes.

- :mod:`~benchmarks.gpu.pack` builds what the call carries (``.gpupack/device``): the packages
  the device lacks as one compressed site folder, and the training data made compact.
- :mod:`~benchmarks.gpu.run` is what the call runs: phases with deadlines, results in ``$OUT``.
- :mod:`~benchmarks.gpu.emulate` runs the same script here, on the CPU, in an environment made of
  the device's package set and the packed packages (``--cpu-dry-run``).

See ``docs/performance.md`` ("The GPU run").
"""
