"""The manager daemon (``qworker-manager serve``): validates workers, recovers the
jobs of dead ones, runs the schedules and serves the operator's surface.

``daemon`` holds the handshake and the watch over workers; around it the
leadership lease, the scheduler, the sinks of notifications, the HTTP API and
its front door, the dashboard's files (``web/``) and the metrics.
"""
