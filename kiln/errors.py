"""Every failure Kiln reports on purpose is a KilnError; the subclasses say which stage."""


class KilnError(Exception):
    """Base class: a problem Kiln detected and can describe in words."""


class UnsupportedOpError(KilnError):
    """The frontend met an ATen op it has no handler for."""


class ShapeError(KilnError):
    """Shapes that contradict each other or the graph (also: bad feeds)."""


class FeedError(ShapeError):
    """A run() feed has the wrong name, dtype or shape."""


class ValidationError(KilnError):
    """A Graph or Plan violates a structural rule at a stage boundary."""


class FileFormatError(KilnError):
    """A saved model file is damaged, truncated or not a Kiln file."""


class BackendError(KilnError):
    """A backend (C library, BLAS) is missing or refused a call."""
