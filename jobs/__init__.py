"""Spark jobs (spark-submit entry points) and their library, jobs.lib."""
