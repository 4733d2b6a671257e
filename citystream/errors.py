"""The one exception type the CLI turns into a one-line message and exit code.

Why: users of a data platform should see "Kafka port 9092 is in use by pid
1234: stop it or set CITYSTREAM_KAFKA_PORT", never a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; ``str()`` is the whole message, exit code 2 by default."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
