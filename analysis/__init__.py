"""Metrics, tables and plots of what ``python -m harness`` wrote. Reads only job dirs on disk."""
