"""The second engine: chunks sent to a pool of vLLM servers (health, retries, spreading the
load) instead of the local model; plus a simulated pool for the benchmark.
"""
