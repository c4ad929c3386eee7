"""The engine's own exception types (the Processing adapter turns them into QgsProcessingException)."""


class ThorError(Exception):
    """Base class of every error the engine raises on purpose; the message says what to do."""


class ThorConfigError(ThorError, ValueError):
    """An invalid setting (model key, group merge, dates, ...)."""


class ThorInputError(ThorError, ValueError):
    """Input imagery that cannot be used (wrong band count, empty area, ...)."""


class ThorWeightsError(ThorError):
    """Weights that cannot be loaded (missing file, missing or mis-shaped keys, hub unreachable)."""


class ThorBackendError(ThorError):
    """A backend that was asked for and is not available."""


class ThorCanceled(ThorError):
    """The run was canceled by the user."""


class ThorFetchError(ThorError):
    """Imagery could not be fetched (Earth Engine errors, timeouts, empty collections)."""


class ThorOutputError(ThorError):
    """An output that cannot be written (folder not writable, disk full, another run writing it)."""
