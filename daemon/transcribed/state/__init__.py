"""What the daemon knows: the job database (an index of what is on disk), the work folder that
holds claimed recordings, the one-instance lock, and reading both back after a loss. Jobs and
commands read it.
"""
