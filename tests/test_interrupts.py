"""The CLI's SIGINT/SIGTERM handler (`msctr.errors.raise_interrupted`) at awkward moments."""

from __future__ import annotations

import importlib
import signal
import sys

import pytest

from msctr.errors import Interrupted, forget_interrupts, interrupt_received, raise_interrupted

SLOW_MODULE = """
import signal, time
signal.raise_signal(signal.SIGINT)  # a Ctrl-C while this module initialises
for _ in range(20):  # native initialisation that must not see an exception: 0.1 s of calls
    time.sleep(0.005)
done = True
"""


@pytest.fixture
def cli_handler():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGALRM)}
    signal.signal(signal.SIGINT, raise_interrupted)
    forget_interrupts()
    try:
        yield
    finally:
        forget_interrupts()
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
            while True:  # the timer raises it here, after the import
                pass
        assert sys.modules["slow_init_module"].done
        assert interrupt_received() == signal.SIGINT
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slow_init_module", None)


def test_an_interrupt_elsewhere_is_raised_at_once(cli_handler):
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGINT)
    assert interrupt_received() == signal.SIGINT
