"""What Windows lacks that some tests need: a skip for each, with the reason."""

from __future__ import annotations

import sys

import pytest

# Windows has no SIGKILL, and Popen.send_signal there sends neither SIGINT nor a SIGTERM a
# process can catch (it terminates it outright).
POSIX_SIGNALS = pytest.mark.skipif(
    sys.platform == "win32", reason="needs POSIX signals (SIGKILL, SIGINT, SIGTERM to a child)"
)
# For a file name parameter that holds "?", which a Windows file name cannot.
QUESTION_MARK_NAMES = pytest.mark.skipif(
    sys.platform == "win32", reason='a Windows file name cannot hold "?"'
)
