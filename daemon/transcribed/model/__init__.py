"""The resident Qwen3-ASR (the local engine): loading and checking model files, batching chunks
across recordings, the per-recording pipeline, aligner, speaker labels, scores. Hands a
transcript on to output.
"""
