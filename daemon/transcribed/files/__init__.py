"""Names and durable writes: which inbox names are recordings, how to show any name, and how to
write a file so that it survives a crash. Every room below uses these.
"""
