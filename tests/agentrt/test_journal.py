"""The journal: one server per file, and a damaged file is refused with its name (issue 18 item 7)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentrt.errors import JournalCorruptError, JournalLockedError
from agentrt.journal import Journal
from agentrt.protocol import Submit


def test_a_second_opener_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j.sqlite")
    with pytest.raises(JournalLockedError, match=rf"j\.sqlite.*pid {os.getpid()}"):
        Journal(tmp_path / "j.sqlite")
    first.close()
    Journal(tmp_path / "j.sqlite").close()  # released on close (and by the kernel if the holder dies)


def test_a_journal_truncated_to_zero_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.accept_many([("t:a", Submit(request_id="r", graph="echo"))])
    j.close()
    assert path.stat().st_size > 0  # the schema is checkpointed into the main file at open
    path.write_bytes(b"")
    with pytest.raises(JournalCorruptError, match=r"j\.sqlite is empty \(0 bytes\)"):
        Journal(path)


def test_a_file_that_is_not_a_journal_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are not the bytes of a database" * 100)
    with pytest.raises(JournalCorruptError, match=r"notes\.sqlite is not a usable agentrt journal"):
        Journal(path)


def test_tokens_secret_and_records_survive_reopening(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    secret = j.secret()
    [(job_id, dup)] = j.accept_many([("t:a", Submit(request_id="r", graph="echo", inputs={"x": 1}, idempotency_key="k"))])
    j.close()
    j = Journal(tmp_path / "j.sqlite")
    assert j.secret() == secret and not dup
    [rec] = j.unfinished()
    assert (rec.job_id, rec.client, rec.inputs) == (job_id, "t:a", {"x": 1})
    assert j.accept_many([("t:a", Submit(request_id="r2", graph="echo", idempotency_key="k"))]) == [(job_id, True)]
    j.close()
