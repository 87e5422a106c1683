"""The weekly schedule: `jobs` (what is done at each moment) and `runner` (the APScheduler wiring).

When the moments fall is `digest.moments`, below the issue workflow.
"""
