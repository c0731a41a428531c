"""The run loop's transactional.id (exactly-once delivery): which one this process takes, held
through a file lock for the process's life. `clients.producer_config` puts it into the producer."""

from __future__ import annotations

import os
import socket

from latentwatch.pipeline.errors import UserError


class TransactionalId:
    """A transactional.id that a restarted process takes over from the one that died.

    Processes of one group on one host claim the lowest free slot 0, 1, 2 ... through an advisory
    file lock, which the kernel releases when a process dies. A restart (after a crash too)
    claims the same slot, so `init_transactions` fences the dead process and aborts its open
    transaction at once, instead of every reader of its outputs, and the committed offsets of
    its partitions, waiting for that transaction to time out. Concurrent processes get
    different slots, so they never fence each other.

    `instance` (setting `instance_id`; the Helm chart passes `<namespace>/<pod name>` from the
    downward API) names the process instead of the hostname: processes that share a hostname
    but not `/tmp` (pods with hostNetwork on one node, containers run with --network host) would
    otherwise both take slot 0 of the same id and fence each other. A pod's name is kept by a
    container restarted in it, so the restart still takes over its predecessor's id.
    """

    def __init__(self, group_id: str, instance: str | None = None):
        import fcntl
        import tempfile

        folder = os.path.join(tempfile.gettempdir(), "latentwatch-txn")
        os.makedirs(folder, exist_ok=True)
        safe_group = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in group_id)
        for slot in range(4096):
            handle = open(os.path.join(folder, f"{safe_group}.{slot}.lock"), "w")  # noqa: SIM115 - held
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self._handle = handle  # the lock lives as long as this object
            who = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in instance) if instance \
                else socket.gethostname()
            self.value = f"latentwatch-{group_id}-{who}-{slot}"
            return
        raise UserError(f"no free transactional.id slot in {folder}")


def fallback_transactional_id(group_id: str) -> str:
    """The id of a producer given none (no `TransactionalId` claimed): this process's own."""
    return f"latentwatch-{group_id}-{os.getpid()}"
