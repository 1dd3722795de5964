"""The optional web page (a separate process): status, upload, transcripts, search. Reads the
state and the outbox; never runs a job.
"""
