"""Domain errors.

Each carries the sentence a user reads (what is wrong and how to fix it). They are mapped to
HTTP status codes in one place: ``http_status`` below, used by the control plane and the dev-server
extension alike.
"""


class FermiError(Exception):
    """Base class: ``message`` is shown to the user as is."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(FermiError):
    """The request is malformed or a field has a wrong value."""

    status = 400


class NotAuthenticated(FermiError):
    status = 401


class Forbidden(FermiError):
    status = 403


class NotFound(FermiError):
    """Missing, or belonging to someone else: both look the same to the caller."""

    status = 404


class Conflict(FermiError):
    """The request clashes with the current state (a stale edit, a duplicate name, a finished job)."""

    status = 409


class TooLarge(FermiError):
    status = 413


class Unprocessable(FermiError):
    """Well-formed, but cannot be done (e.g. a GPU engine on a machine without a GPU)."""

    status = 422


class Unavailable(FermiError):
    """A dependency of the platform is down; retrying later may work."""

    status = 503


def http_status(error: Exception) -> int:
    return getattr(error, "status", 500)
