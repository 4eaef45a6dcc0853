"""`lmbench compare --junit`: the file is whole or absent, never cut short by a full disk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lmbench.analyze import gate
from lmbench.analyze.compare import Verdict
from lmbench.errors import ResultsError

VERDICTS = [Verdict(config_key="k", verdict="unchanged", ratio=1.0, ci_low=0.99, ci_high=1.01, n_base=3, n_cand=3)]


def test_a_full_disk_leaves_the_earlier_file_whole_and_nothing_beside_it(tmp_path, monkeypatch):
    """A write in place on a full disk left an empty XML, which a CI's JUnit reader takes for no test cases
    (trial 100)."""
    path = tmp_path / "gate.xml"
    path.write_text("<earlier/>\n")
    write_text = Path.write_text

    def fills(self, text, *args, **kwargs):
        write_text(self, text[:10], *args, **kwargs)  # the disk's last bytes, then no more
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fills)
    with pytest.raises(ResultsError, match=rf"^cannot write --junit '{path}': No space left on device$"):
        gate.write_junit(path, VERDICTS, metric="tokens_per_s")
    assert path.read_text() == "<earlier/>\n" and os.listdir(tmp_path) == ["gate.xml"]
    monkeypatch.undo()
    gate.write_junit(path, VERDICTS, metric="tokens_per_s")
    assert path.read_text() == gate.junit_xml(VERDICTS, metric="tokens_per_s") and os.listdir(tmp_path) == ["gate.xml"]


def test_a_link_is_written_through_and_a_device_in_place(tmp_path):
    target = tmp_path / "real.xml"
    target.write_text("")
    link = tmp_path / "gate.xml"
    link.symlink_to(target)
    gate.write_junit(link, VERDICTS, metric="tokens_per_s")
    assert link.is_symlink() and target.read_text().startswith("<?xml")
    if os.path.exists("/dev/full"):
        # Renamed over, /dev/full would be a regular file (for root, who may); written in place it is full.
        with pytest.raises(ResultsError, match=r"^cannot write --junit '/dev/full': No space left on device$"):
            gate.write_junit(Path("/dev/full"), VERDICTS, metric="tokens_per_s")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
