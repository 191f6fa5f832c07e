"""The end-to-end demo: an example webhook receiver and a driver script."""
