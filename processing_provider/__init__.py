"""Processing adapter of the THOR engine: parameters → specs, feedback → callables, errors → QgsProcessingException."""
