"""Shared plumbing for every stage: typed settings, connections, logging, the local stack.

This package imports nothing else of the project (see DESIGN.md, layering).
"""
