"""utils/runstop.py: stop requests from signals, what is printed at once, and the exit codes."""

from __future__ import annotations

import os
import signal

import pytest

from utils.runstop import EXIT_ERROR, EXIT_FINISHED, StopRequest, exit_code

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def test_exit_codes():
    assert exit_code(True, None) == EXIT_FINISHED == 0
    assert exit_code(True, signal.SIGTERM) == 0  # asked to stop during the last test, but it finished
    assert exit_code(False, signal.SIGINT) == 130
    assert exit_code(False, signal.SIGTERM) == 143
    assert exit_code(False, None) == EXIT_ERROR == 1


def _read_all(fd):
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 10000).decode()
    except BlockingIOError:
        return ""


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_sigterm_is_recorded_announced_at_once_and_gives_143(pipe):
    r, w = pipe
    stop = StopRequest(announce_fd=w)
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    stop.install()
    try:
        assert stop.exit_code(finished=False) == 1 and not stop.requested
        with stop.during("the test of epoch 3"):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
            assert stop.requested and stop.signum == signal.SIGTERM
            assert _read_all(r) == (
                "\nSIGTERM received: the run will stop after the test of epoch 3 and save a checkpoint "
                "(press Ctrl-C again to stop at once without saving)\n"
            )
        assert stop.stage == "this batch"
        os.kill(os.getpid(), signal.SIGTERM)  # a second request: nothing more is printed, the first signal counts
        assert _read_all(r) == "" and stop.signum == signal.SIGTERM
        assert stop.exit_code(finished=False) == 143 and stop.exit_code(finished=True) == 0
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == previous
    assert signal.getsignal(signal.SIGINT) == previous_int


def test_ctrl_c_gives_130_and_a_second_one_interrupts_at_once(pipe):
    r, w = pipe
    stop = StopRequest(announce_fd=w)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code(finished=False) == 130
        assert "SIGINT received: the run will stop after this batch" in _read_all(r)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()


def test_testing_hook_behaves_as_sigterm():
    previous = signal.getsignal(signal.SIGINT)
    stop = StopRequest(after_batches=3, announce_fd=None)
    for _ in range(2):
        stop.count_batch()
    assert not stop.requested
    stop.count_batch()
    assert stop.requested and stop.signum == signal.SIGTERM and stop.exit_code(finished=False) == 143
    stop(signal.SIGINT, None)  # a real signal afterwards does not change the recorded one
    assert stop.signum == signal.SIGTERM
    signal.signal(signal.SIGINT, previous)
