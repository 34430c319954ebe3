"""Events in, records out: parsing, sources (Kafka, file replay), label join, offsets.

Imports nothing from the other lifelong packages.
"""
