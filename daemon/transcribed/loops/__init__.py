"""The daemon's long-running loops and the one supervisor that runs them all (intake, hasher,
workers, disposals, hooks, the model): start, pace, back off after a failure, heartbeat,
health, join.
"""
