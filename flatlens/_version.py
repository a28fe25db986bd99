"""The package version (recorded in every cache key, record and checkpoint output): a leaf every module may import."""
__version__ = "0.1.0"
