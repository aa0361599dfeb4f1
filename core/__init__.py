"""The shared domain core: the wire contract, the metric catalog, settings, the registry and the stores.

Every service imports it; it imports none of them.
"""
