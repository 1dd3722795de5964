"""Running a claimed job: folder rules, the worker (decode -> model -> output -> disposal),
where its transcripts and original go, and retention of old rows.
"""
