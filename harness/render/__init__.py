"""Rendering: the timeline plot, flamegraphs, report.html, CSV files and the terminal summary.

Renderers take what ``harness.analysis`` computed and write it; they compute nothing of their own.
"""
