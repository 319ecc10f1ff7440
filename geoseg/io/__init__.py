"""Input and output: the only place that opens rasters.

- :mod:`~geoseg.io.read`: scenes and their metadata, band selection, masks, windowed tile reads.
- :mod:`~geoseg.io.grid`: the grid a scene is read on (its GSD, the model's own pixel size).
- :mod:`~geoseg.io.mosaic`: several scenes read as one (a VRT over a common grid).
- :mod:`~geoseg.io.write`: streaming Cloud-Optimized GeoTIFF writers, previews, class tags.
"""
