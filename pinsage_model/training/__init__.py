"""Training internals, torch and numpy only: the graph in memory (`graph`), minibatch computation
graphs (`subgraph`), examples and negatives (`sampling`), losses (`loss`) and the loop (`loop`).
`jobs/train.py` reads the tables and calls `loop.train`."""
