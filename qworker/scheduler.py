"""The stable name of the function every stored schedule calls: ``qworker.scheduler:fire``.

APScheduler keeps a reference to its job's function in each stored schedule,
and drops the schedules whose reference it cannot import. The function lives
in ``qworker.manager.scheduler``; stores made before it moved, and since,
name it here.
"""

from qworker.manager.scheduler import fire

__all__ = ["fire"]
