"""The distribution-shift robustness benchmark: see bench/shift/README.md."""
