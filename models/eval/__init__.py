"""Evaluation of trained few-shot models, depending only on ``varmem.models`` and ``varmem.episodes``.

    bound           the validation bound: K-sample NLL bound, objective terms, accuracy (training and ``varmem eval``)
    protocol        the protocol's orchestration: the parts a model's capabilities allow, their cost, progress
    capabilities    which parts a model can run, and why not
    nll_tables      NLL vs examples of one class, NLL vs classes beside the optimum (paired rows)
    conditioning    the talk's table: NLL vs conditioning examples n = 0..19 for C_test = 1..4 classes (paired)
    classification  the benchmark: N-way K-shot between/within alphabets by q(a|x) or the family's classifier,
                    likelihood, cosine NN on embeddings, pixels; one classifier rule, random tie-breaking
    lake            Lake et al.'s 20-way 1-shot runs
    seeds           the seed papers' numbers, printed beside ours where a row matches
    pictures        sample grids (Bernoulli means or binary samples) and q(a|x) pictures (PIL)
    plots           the NLL tables as matplotlib plots; a generic line plot
    report          console and Markdown tables, CSV; comparing runs
    cost, progress, passes, stats   what a part costs; bars and lines; seeded bounded passes; intervals
"""
