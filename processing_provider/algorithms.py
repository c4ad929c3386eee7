"""The provider's algorithms, in toolbox order. Importing them loads no torch and no Earth Engine client."""


def algorithm_classes():
    from .alg_raster_grid import RasterGridAlgorithm
    from .alg_raster_pooled import RasterPooledAlgorithm

    return [RasterGridAlgorithm, RasterPooledAlgorithm]
