"""Rich displays: cluster cards, progress bars, task tables, the timeline."""
