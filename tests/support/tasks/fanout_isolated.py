"""``fanout`` in a child process (isolation: process): its group and DAG reach the
worker through the child's pipe."""

from support.tasks.fanout import setup

__all__ = ["setup"]
