"""After the transcript is durable: the original moved to the archive, deleted or shredded, and
verified; quarantine for failures. The last step of a job.
"""
