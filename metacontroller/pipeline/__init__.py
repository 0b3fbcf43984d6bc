"""The paper's experiment as reusable phases: data → pretrain → probe → discover → rl → baselines → report.

`train_pinpad.py` is a thin command line over `cli.main`; another environment
supplies its own `EnvAdapter` (see `adapter.py`; pinpad's and BabyAI's are in
`adapters/`) and reuses everything else.
"""
