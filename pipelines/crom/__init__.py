"""CROM, the operational layer: Kafka -> parse -> validate (Great Expectations) -> Delta.

Never imports the functional or strategic layers; it only writes tables they may read.
"""
