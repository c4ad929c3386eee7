"""The provider's algorithms, in toolbox order. Importing them loads no torch and no Earth Engine client."""


def algorithm_classes():
    from .alg_raster_grid import RasterGridAlgorithm
    from .alg_raster_pooled import RasterPooledAlgorithm

    from .alg_embedding_rgb import EmbeddingRgbAlgorithm
    from .alg_similarity import SimilarityAlgorithm
    from .alg_clusters import ClustersAlgorithm
    from .alg_change import ChangeAlgorithm
    from .alg_classify import ClassifyAlgorithm
    from .alg_regress import RegressAlgorithm
    from .alg_apply_model import ApplyModelAlgorithm
    from .alg_extract_samples import ExtractSamplesAlgorithm
    from .alg_search import SimilaritySearchAlgorithm
    from .alg_trajectory import TrajectoryAlgorithm

    from .alg_ee_composite import EECompositeAlgorithm
    from .alg_ee_grid import EEGridAlgorithm
    from .alg_ee_pooled import EEPooledAlgorithm

    return [RasterGridAlgorithm, RasterPooledAlgorithm,
            EECompositeAlgorithm, EEGridAlgorithm, EEPooledAlgorithm,
            EmbeddingRgbAlgorithm, SimilarityAlgorithm, ClustersAlgorithm, ChangeAlgorithm,
            ClassifyAlgorithm, RegressAlgorithm, ApplyModelAlgorithm, ExtractSamplesAlgorithm,
            SimilaritySearchAlgorithm, TrajectoryAlgorithm]
