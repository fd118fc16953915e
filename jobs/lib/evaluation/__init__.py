"""Offline evaluation of pin embeddings, as in the PinSage paper (section 4.2 and Figure 4): where the
positive of each (query, positive) pair ranks among the candidates, and how spread out the embedding
space is. jobs/evaluate.py runs it; the modules here are cut by concern:

    checks.py   input checks: labels, pairs, coverage of the pair and candidate pins, vector width
    ranking.py  the candidate pool, the query blocks and the executor kernel that counts, per pair,
                the candidates scoring above and level with the positive; the graph (random walk)
                and popularity baselines
    cooccurrence.py  the co-occurrence baselines of the memberships: item-kNN and RP3beta (a Spark
                self-join through the boards), EASE (a dense inverse on the driver)
    metrics.py  hit rate, MRR and scaled MRR per method, paired hits and their sign test
    health.py   the embedding space's health (Figure 4): random-pair cosine statistics and histogram,
                the 2-D PCA map of labelled pins, and the PNG plots

Ranks. For a pair (q, p) and a candidate pool S (every pin with an embedding, or a seeded sample of
them), the candidates are S without q and p, plus p itself. With s(c) the score of candidate c for
q (cosine similarity, or a walk visit count for the graph baseline):

    higher = #{c != p : s(c) > s(p)},   ties = #{c != p : s(c) = s(p)},   rank = 1 + higher + ties

Ties count against the positive (the pessimistic rank), so a model that scores everything alike
gets the worst rank rather than the best; `higher` and `ties` are kept per pair, so the optimistic
(1 + higher) and expected (1 + higher + ties / 2) ranks can be derived from the output. Cosine
scores are computed in float64 from vectors divided by max(||v||, NORM_EPS) (a zero vector scores 0
against everything); two scores within TIE_TOLERANCE are equal, so a candidate that carries the
positive's own vector ties with it whatever order the floating-point sums ran in (ranking.py). The
co-occurrence scores (item-kNN, RP3beta, EASE) have no fixed scale, so two of them within a relative
1e-9 of the larger are equal (cooccurrence.py); a pool pin that such a method cannot score (no board
shared with the query, or no board at all) scores 0 and ties with a positive scored 0.

Metrics over the distinct pairs: hit-rate@k = share of pairs with rank <= k, MRR = mean(1 / rank),
scaled MRR = mean(1 / ceil(rank / 100)) (the paper's MRR, whose candidate pool has billions of pins).
"""
