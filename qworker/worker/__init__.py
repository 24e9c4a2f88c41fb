"""The worker daemon (``qworker``): claims jobs of its tasks and runs them.

``daemon`` is the claim loop and the running of jobs; around it, what it is
made of: the candidates it claims from, the outbox of its writes, the runner
of handlers (threads, the event loop, child processes), the membership of a
managed fleet, and ``taskapi``, what task code is given.
"""
