"""The two kinds of failure the command line distinguishes.

Library code raises these instead of printing or exiting, so the CLI is the only place that turns
failures into exit codes, and a library user can catch them.
"""


class SRCompressError(Exception):
    """Base class of every failure srcompress reports to a user in one sentence."""

    exit_code = 1


class UserInputError(SRCompressError):
    """Bad input or usage: a missing or corrupt file, a wrong flag, an unsupported model.

    The message is one sentence that names the file or flag and says what to do.
    """

    exit_code = 2


class WorkFailedError(SRCompressError):
    """The inputs were fine but the work did not succeed (e.g. export verification failed)."""

    exit_code = 1
