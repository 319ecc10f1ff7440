"""The engine: tiles in, blended class bands out (read -> infer -> stitch, one tile row at a time).

- :mod:`~geoseg.engine.tiling`: the overlapping tile grid over a scene (pure arithmetic).
- :mod:`~geoseg.engine.inference`: batches, devices, mixed precision, reads overlapped with compute.
- :mod:`~geoseg.engine.stitch`: blending tile probabilities into finished row bands.
- :mod:`~geoseg.engine.regrid`: bands of a resampled read grid back onto the scene's own grid.
- :mod:`~geoseg.engine.plan`: a run settled before anything is written (scene, output folder,
  model fit, tile grid, memory, partial folder).
- :mod:`~geoseg.engine.loop`: the one tile loop that every engine runs.
- :mod:`~geoseg.engine.outputs`: the output rasters: opened, fed an engine's bands (resumable,
  regridded), closed into COGs.
- :mod:`~geoseg.engine.journal`: the resumable partial run (what is done, where it is written).
- :mod:`~geoseg.engine.memory`: the memory a run will need, checked before it starts.
- :mod:`~geoseg.engine.chunked`: the tile loop over the chunks of a dask array (xarray input).
- :mod:`~geoseg.engine.workers`: per-worker predictor caches on dask.distributed workers.
"""
