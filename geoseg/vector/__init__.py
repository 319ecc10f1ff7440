"""Vectorizing: a class raster to polygons in a GeoPackage that QGIS opens styled, block by block.

- :mod:`~geoseg.vector.vectorize`: the stage's entry point (:func:`vectorize`).
- :mod:`~geoseg.vector.blocks`: the raster's blocks and the seams between them.
- :mod:`~geoseg.vector.sieve`: removing regions under a minimum area, across block seams.
- :mod:`~geoseg.vector.polygonize`: regions to polygons, merged across block seams.
- :mod:`~geoseg.vector.coverage`: the polygons' topology (a gap- and overlap-free coverage).
- :mod:`~geoseg.vector.measure`: areas and perimeters in metres, geodesic where needed.
- :mod:`~geoseg.vector.gpkg`: writing the GeoPackage layers.
- :mod:`~geoseg.vector.qgis`: QGIS styles (QML) for the class raster and the polygon layer.
"""
