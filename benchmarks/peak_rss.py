"""Run a module or script in this process and record its peak RSS when the process ends.

    python peak_rss.py OUTFILE -m MODULE [ARGS...]
    python peak_rss.py OUTFILE SCRIPT [ARGS...]

Writes VmHWM (kB) from /proc/self/status to OUTFILE at exit. Why not the parent's
``ru_maxrss`` of the child: Linux carries the forking parent's high-water mark into the child
through exec, so every child of a 65 MB benchmark process would report at least 65 MB.
VmHWM belongs to the address space exec made, so it is the child's own. Where /proc is
missing, the child's own ru_maxrss is written instead.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
from pathlib import Path


def _peak_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    outfile = Path(sys.argv[1])
    atexit.register(lambda: outfile.write_text(str(_peak_kb())))
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
