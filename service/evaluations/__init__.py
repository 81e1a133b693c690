"""Evaluations: a registered version measured on a dataset's splits by a worker."""
