"""Errors a user can cause and fix. The CLI prints them as one line, never a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""


# -- what can go wrong with a batch: typed, handled in one place (pipeline.runner) ----------------
class BatchFailed(Exception):
    """The batch is not durable (a delivery or commit failed): rewind to the committed offsets
    and redo it. Nothing of it was committed."""


class ProducerBroken(BatchFailed):
    """The producer hit a fatal error (e.g. fenced, or a transactional call that never returned):
    replace it (same transactional.id, which fences the old one), then redo the batch."""


class Fatal(Exception):
    """The consumer cannot go on (a fatal Kafka error): stop, exit 1."""


class Stopping(Exception):
    """A stop was asked for and its time (`shutdown_timeout_s`) ran out while waiting on Kafka:
    the batch in hand is given up uncommitted; the next owner of its partitions redoes it."""
