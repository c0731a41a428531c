"""Transactional ids: unique per live process wherever it runs, stable across its restarts."""

from __future__ import annotations

import socket
import tempfile

from latentwatch.pipeline.kafka.txn_id import TransactionalId


def _in_container(monkeypatch, tmp_path, name, hostname="node-1"):
    """A process as in a container of its own: its own /tmp, the host's hostname (hostNetwork)."""
    own_tmp = tmp_path / name
    own_tmp.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(own_tmp))
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)


def test_two_pods_with_one_hostname_and_separate_tmp_get_different_ids(monkeypatch, tmp_path):
    _in_container(monkeypatch, tmp_path, "pod-a")
    a = TransactionalId("g", instance="ns/latentwatch-7d9f-a")
    _in_container(monkeypatch, tmp_path, "pod-b")
    b = TransactionalId("g", instance="ns/latentwatch-7d9f-b")
    assert a.value != b.value  # they would fence each other (51 + 43 producer replacements in 50 s)


def test_a_container_restarted_in_its_pod_takes_its_id_again(monkeypatch, tmp_path):
    _in_container(monkeypatch, tmp_path, "first-run")
    first = TransactionalId("g", instance="ns/latentwatch-7d9f-a")
    value = first.value
    del first  # the process died: its lock is gone with it
    _in_container(monkeypatch, tmp_path, "second-run")  # a fresh container /tmp, the same pod
    assert TransactionalId("g", instance="ns/latentwatch-7d9f-a").value == value


def test_without_an_instance_the_hostname_names_the_process(monkeypatch, tmp_path):
    _in_container(monkeypatch, tmp_path, "x", hostname="pod-123")
    assert TransactionalId("g").value == "latentwatch-g-pod-123-0"
