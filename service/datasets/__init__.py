"""Datasets: registered from a server path under allowed roots or an uploaded archive."""
