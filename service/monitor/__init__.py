"""Shift monitoring of served traffic: profiles, windows, feedback, gauges."""
