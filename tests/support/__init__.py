"""What the tests share: the server, the processes, waiting, reading their logs.

Fixtures stay in ``tests/conftest.py``; these are the plain helpers beneath them.
Test task code imports ``support.effects`` too (``tests/`` is on the PYTHONPATH of
every process the tests start), so this package imports nothing on its own.
"""
