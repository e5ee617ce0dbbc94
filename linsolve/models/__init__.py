"""Pretrained models: listing, safe loading (no pickle) and atomic saving.
"""
