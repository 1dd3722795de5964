"""The CLI's verbs that are more than a call into the service: one-shot transcribe, doctor,
bench (and its backlog), the pool benchmark, the vLLM check, and the GPU check's steps.
"""
