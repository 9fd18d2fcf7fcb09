"""How many threads the engine uses, and how they wait: measured on a shared 2-core machine.

Two facts decide decode speed on a student's laptop, where a browser and JupyterLab compete for
the same cores (``python -m bitnet_edu.bench decode --busy 1`` measures both situations):

* **How threads wait.**  Numba's ``omp`` threading layer is GNU OpenMP.  At the end of every
  parallel loop a thread that finishes early spins (about 300,000 iterations by default) waiting
  for the others; when another program holds one of the cores, the thread it displaced finishes
  late and its partner burns the free core spinning.  Measured at the 2B4T shape (10 layers, 2
  threads, one busy process): decode 10 tok/s with the default spin, 14.5 with
  ``GOMP_SPINCOUNT=10000``, 18 with ``OMP_WAIT_POLICY=passive`` (no spin) and 17.7 with the
  ``workqueue`` layer; unloaded the same settings gave 35.1, 34.9, 32.8 and 27.6 tok/s.  A
  spin count of 10,000 is the one setting that keeps the unloaded speed, so :func:`configure_openmp`
  makes it the default (a value the user set wins).  ``tbb`` needs ``pip install tbb`` plus a
  library path in a venv, and was slower unloaded.
* **How many threads.**  A thread that waits for a busy core stalls every parallel step, so with
  ``model.threads = None`` the engine uses no more threads than the CPUs other programs leave
  free (:func:`auto_threads`, from :func:`cpus_busy_elsewhere`).  An explicit count is obeyed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

__all__ = ["SPINCOUNT", "configure_openmp", "openmp_settings", "cpus_busy_elsewhere", "BusyCpus",
           "BUSY", "auto_threads", "busy_programs", "loadavg", "BUSY_LOAD",
           "busy_warning"]

#: GOMP_SPINCOUNT set by :func:`configure_openmp` unless the user chose a wait policy
SPINCOUNT = "10000"


def configure_openmp() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPINCOUNT` unless ``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` is already set.  OpenMP reads it when its library loads (Numba loads it at
    the first parallel call), so this must run before that; ``bitnet_edu.kernels`` calls it on
    import.  Returns True if it set the variable."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True


def openmp_settings() -> dict:
    """The wait settings in effect, for reports: ``{"GOMP_SPINCOUNT": ..., "OMP_WAIT_POLICY": ...}``
    (None when unset)."""
    return {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}


def cpus_busy_elsewhere() -> int:
    """How many CPUs other programs keep busy right now: the machine's runnable threads (the
    "running" count of ``/proc/loadavg``, taken at this instant, unlike the load averages) minus
    this process's own running threads.  0 where ``/proc`` is missing (not Linux)."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        mine = 0
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
            mine += stat[stat.rindex(")") + 2] == "R"  # the state letter follows "(name) "
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - mine)


class BusyCpus:
    """:func:`cpus_busy_elsewhere`, the least of its last ``keep`` readings (one per forward
    pass), so that a program that runs for an instant does not take a thread away from a whole
    run, while one that stays busy does within a few tokens."""

    def __init__(self, keep: int = 3):
        self.readings, self.keep = [], keep
        self.lock = threading.Lock()

    def recent(self) -> int:
        now = cpus_busy_elsewhere()
        with self.lock:
            self.readings = (self.readings + [now])[-self.keep:]
            return min(self.readings)


BUSY = BusyCpus()


def auto_threads(wanted: int) -> int:
    """At most ``wanted`` threads, and no more than the CPUs other programs leave free (>= 1)."""
    return max(1, min(wanted, (os.cpu_count() or 1) - BUSY.recent()))


@contextlib.contextmanager
def busy_programs(n: int = 1):
    """Run ``n`` competing programs (a pure-Python busy loop each, pinned nowhere: a browser tab
    spinning, a second notebook training) for the duration of the ``with`` block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.2)  # let them get going before anything is timed
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none, e.g. Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover
        return None


#: a 1-minute load average above this means other programs compete for the cores
BUSY_LOAD = 0.5


def busy_warning(load_before, load_after=None, rel_iqr=None) -> str:
    """'' on a quiet machine, else a sentence saying the machine was busy and what that does."""
    loads = [v for v in (load_before, load_after) if v is not None]
    if not loads or max(loads) <= BUSY_LOAD:
        return ""
    sp = f"; the timings' median relative spread (IQR / median) was {rel_iqr:.0%}" if rel_iqr else ""
    return (f"WARNING: the machine was busy (1-minute load average {max(loads):.2f} > {BUSY_LOAD}){sp}. "
            f"Other programs share the cores and memory bus: medians are slower and noisier than "
            f"on an idle machine; compare only figures measured in the same run, and rerun when idle.")
