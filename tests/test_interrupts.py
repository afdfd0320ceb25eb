"""The CLI's SIGINT/SIGTERM handler (`msctr.errors.raise_interrupted`) at awkward moments."""

from __future__ import annotations

import importlib
import signal
import sys
import time

import pytest

from msctr.errors import Interrupted, forget_interrupts, handle_interrupts, interrupt_received

SLOW_MODULE = """
import signal, time
signal.raise_signal(signal.SIGINT)  # a Ctrl-C while this module initialises
for _ in range(20):  # native initialisation that must not see an exception: 0.1 s of calls
    time.sleep(0.005)
done = True
"""


def spin(seconds: float) -> None:
    """Run Python code (where a pending handler runs) for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


@pytest.fixture
def cli_handler():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    hook = sys.unraisablehook
    handle_interrupts()
    forget_interrupts()
    try:
        yield
    finally:
        forget_interrupts()
        sys.unraisablehook = hook
        for s, h in saved.items():
            signal.signal(s, h)


def test_an_interrupt_during_an_import_is_raised_once_the_import_is_done(tmp_path, cli_handler):
    """Raising inside a native module's initialisation can abort the process (torch's
    pybind11: std::terminate); the handler waits until the import has finished."""
    (tmp_path / "slow_init_module.py").write_text(SLOW_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(Interrupted):
            importlib.import_module("slow_init_module")
            spin(5)  # the timer raises it here, after the import
        assert sys.modules["slow_init_module"].done
        assert interrupt_received() == signal.SIGINT
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slow_init_module", None)


def test_an_interrupt_elsewhere_is_raised_at_once(cli_handler):
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGINT)
    assert interrupt_received() == signal.SIGINT


class InterruptedWhileCollected:
    def __del__(self) -> None:  # Python cannot pass an exception out of here: "ignored"
        signal.raise_signal(signal.SIGINT)


def test_an_interrupt_swallowed_where_it_was_raised_is_raised_again(cli_handler, capsys):
    """Raised where no exception can go on (a finaliser, a native callback), Python prints
    "Exception ignored in: ..." and drops it; the CLI's hook raises it again a moment later,
    and prints nothing."""
    with pytest.raises(Interrupted):
        InterruptedWhileCollected()  # collected at once: __del__ runs, the handler raises
        spin(5)  # the retry raises it here
    assert "Exception ignored" not in capsys.readouterr().err
