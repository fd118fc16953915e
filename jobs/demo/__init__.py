"""Demo helpers, apart from the production jobs: a generated graph, a random checkpoint, nearest pins."""
