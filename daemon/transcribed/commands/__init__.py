"""The CLI's verbs that are more than a call into the service: one-shot transcribe, doctor,
bench, the pool benchmark and the vLLM check.
"""
