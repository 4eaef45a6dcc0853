"""Host memory growth: the peak resident set (VmHWM) over a baseline, through the process's one peak counter."""

import pytest

from lmbench.measure import hostmem

MIB = 2**20


class FakeProc:
    """/proc/self/status's VmRSS and VmHWM as the test sets them, and a clear_refs that resets the peak (or that the
    kernel refuses)."""

    def __init__(self, tmp_path, monkeypatch, *, resets=True):
        self.status = tmp_path / "status"
        self.rss = self.peak = 0
        monkeypatch.setattr(hostmem, "_STATUS", self.status)
        monkeypatch.setattr(hostmem, "_CLEAR_REFS", tmp_path / ("clear_refs" if resets else "no-such-dir/clear_refs"))
        self.resets = resets
        self._write()

    def _write(self):
        self.status.write_text(f"Name:\tpython\nVmHWM:\t{self.peak // 1024} kB\nVmRSS:\t{self.rss // 1024} kB\n")

    def use(self, rss):
        self.rss, self.peak = rss, max(self.peak, rss)
        self._write()

    def reset(self):
        if self.resets:
            self.peak = self.rss
            self._write()


@pytest.fixture
def proc(tmp_path, monkeypatch):
    fake = FakeProc(tmp_path, monkeypatch)
    real_reset = hostmem.reset_peak

    def reset_peak():
        done = real_reset()
        fake.reset()
        return done
    monkeypatch.setattr(hostmem, "reset_peak", reset_peak)
    return fake


def test_training_growth_keeps_warmups_peak_through_the_windows_reset(proc):
    """The window's budget resets the one peak counter as it opens: training's budget (warmup included) read only
    the window's peak, 20 MiB after a 300 MiB warmup transient (a reviewer's repro)."""
    proc.use(100 * MIB)
    training = hostmem.Budget(0)
    proc.use(400 * MIB)  # warmup: a 300 MiB transient (first step, compilation)
    proc.use(110 * MIB)
    window = hostmem.Budget(0)
    proc.use(130 * MIB)  # the window's steps: 20 MiB
    assert window.growth_bytes == 20 * MIB
    assert training.growth_bytes == 300 * MIB
    proc.use(500 * MIB)  # a later peak above warmup's counts for both
    assert (training.growth_bytes, window.growth_bytes) == (400 * MIB, 390 * MIB)


def test_training_cap_sees_warmups_peak_after_the_window_opens(proc):
    proc.use(100 * MIB)
    training = hostmem.Budget(250 * MIB)
    proc.use(400 * MIB)
    proc.use(100 * MIB)
    hostmem.Budget(0)
    with pytest.raises(hostmem.MemoryCapExceeded, match="grew by 300.00 MiB"):
        training.check()


def test_a_refused_reset_leaves_growth_unknown_not_the_lifetime_peak(tmp_path, monkeypatch):
    """Without clear_refs the peak is the process's lifetime one: a 200 MiB start-up transient read as the growth of
    a window that allocated nothing (a reviewer's repro). Growth is known once the peak rises past the one before
    the window; a cap is then checked on the resident set's growth."""
    proc = FakeProc(tmp_path, monkeypatch, resets=False)
    proc.use(300 * MIB)  # model build in fp32
    proc.use(100 * MIB)
    window = hostmem.Budget(50 * MIB)
    assert not window.peak_reset
    proc.use(120 * MIB)
    assert window.growth_bytes is None
    window.check()  # 20 MiB resident: under the cap
    proc.use(180 * MIB)
    with pytest.raises(hostmem.MemoryCapExceeded, match="grew by 80.00 MiB"):
        window.check()
    proc.use(350 * MIB)  # past start-up's peak: this peak is the window's own
    assert window.growth_bytes == 250 * MIB


def test_the_real_peak_counter_keeps_warmups_peak():
    """The same on this process's /proc, where the kernel allows the reset."""
    training = hostmem.Budget(0)
    if not training.peak_reset or training.growth_bytes is None:
        pytest.skip("no resettable peak resident set here")
    transient = bytearray(64 * MIB)
    transient[::4096] = b"\1" * len(transient[::4096])
    del transient
    window = hostmem.Budget(0)
    assert window.growth_bytes < 32 * MIB
    assert training.growth_bytes >= 60 * MIB
