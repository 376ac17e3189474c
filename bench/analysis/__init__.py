"""What a run concludes, computed once from its records: the downstream verdicts per pair, scenario
and recipe family with their intervals, and which fp32 models are healthy (`verdicts`); the step
that writes them beside the records (`downstream`). The report and the memo render these; they do
not recompute them their own way.

Must not import `ffnbench.bench.report` or `ffnbench.bench.gate`: a conclusion is drawn from
records, never from how they are shown or gated.
"""
