"""The README's usage example runs as written."""
import re
from functools import partialmethod
from pathlib import Path

from metacontroller import Transformer

README = Path(__file__).parent.parent / 'README.md'


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags = re.S)
    usage = next(block for block in blocks if 'from metacontroller import Transformer, MetaController' in block)
    monkeypatch.chdir(tmp_path)  # anything it writes stays in the temp dir
    # the code runs verbatim; only x-evolution's population is shrunk to keep the suite fast
    monkeypatch.setattr(Transformer, 'evolve', partialmethod(Transformer.evolve, noise_population_size = 4))
    namespace = {}
    exec(compile(usage, str(README), 'exec'), namespace)
    assert isinstance(namespace['model'], Transformer) and namespace['model'].meta_controller is not None
