"""From the inbox to a claimed job: the watcher, readiness and completeness checks, the claim
into the work folder, strays and the reconciler. Hands queued jobs on to jobs.
"""
