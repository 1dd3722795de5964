"""From any container to 16 kHz mono floats: the decoder child process, format checks and
repairs, chunking at pauses, and the memory budget. Hands chunks on to the model.
"""
