"""CRFM, the functional layer: per-customer parameters compiled from functional directives.

Reads CROM's silver Delta tables; never imports CROM code.
"""
