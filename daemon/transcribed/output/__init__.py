"""The transcript as a value, its files (txt, json, srt, vtt, tsv) published atomically to the
outbox, and the search index over them. Hands the published transcript on to disposal.
"""
